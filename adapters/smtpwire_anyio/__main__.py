"""``python -m smtpwire_anyio serve``: the same as the ``smtpwire`` command."""

from ._cli import main

main()
