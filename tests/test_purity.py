"""The core, and the sender-authentication checks beside it, stay sans-IO: no I/O, clock or randomness module."""

import ast
import pathlib

import pytest

FORBIDDEN = {
    "socket",
    "ssl",
    "select",
    "selectors",
    "asyncio",
    "anyio",
    "trio",
    "threading",
    "time",
    "os",
    "subprocess",
}
CORE = pathlib.Path(__file__).resolve().parents[1] / "src" / "smtpwire"
VERIFY = CORE.parent / "smtpwire_verify"
#: The checks ask DNS questions; they never resolve (dnspython's resolver is the adapters'), nor draw a random number.
FORBIDDEN_IN_VERIFY = FORBIDDEN | {"dns", "random", "secrets", "urllib3", "http"}


def imported_modules(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_no_io(path: pathlib.Path) -> None:
    assert imported_modules(path) & FORBIDDEN == set()


@pytest.mark.parametrize("path", sorted(VERIFY.glob("*.py")), ids=lambda p: p.name)
def test_verifier_module_imports_no_io(path: pathlib.Path) -> None:
    assert imported_modules(path) & FORBIDDEN_IN_VERIFY == set()


def test_the_check_sees_imports() -> None:
    fake = CORE.parent / "not_a_module.txt"
    assert imported_modules(CORE / "_grammar.py") >= {"re", "ipaddress"}
    assert not fake.exists()
