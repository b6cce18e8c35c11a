"""The tests mirror the code module by module: the tests of src/aelab/X/Y.py are in tests/X/test_Y.py, so a newcomer
finds the one test module of any module, and a new module without one fails here."""

from __future__ import annotations

from support.process import SRC

TESTS = SRC.parent / "tests"
UNMIRRORED = {  # file name -> why it has no test module of its own
    "__init__.py": "a package's names; models/__init__.py, the registry, is tested with every variant it holds "
                   "(models/test_contract.py) and every plugin (test_extending.py)",
    "__main__.py": "two lines that call cli.main, run by every test that starts `python -m aelab`",
}


def test_every_module_has_its_test_module():
    package = SRC / "aelab"
    modules = [path.relative_to(package) for path in sorted(package.rglob("*.py")) if path.name not in UNMIRRORED]
    assert len(modules) > 50  # the walk found the code
    missing = [f"src/aelab/{m} has no tests/{m.with_name(f'test_{m.name}')}" for m in modules
               if not (TESTS / m.with_name(f"test_{m.name}")).is_file()]
    assert not missing, missing
