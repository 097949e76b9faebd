"""``python -m smtpwire_serve``: the same as the ``smtpwire`` command."""

from ._launch import main

main()
