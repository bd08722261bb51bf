"""The test suite, laid out like the packages it tests (tests/training, tests/probes, ...).

Every folder is a package, so pytest (default prepend import mode) imports a test file as
``tests.<folder>.<name>`` with the repository root on sys.path: the helpers are imported as
``tests.tiny_runs`` / ``tests.figures`` from any folder, and basenames need not be unique.
"""
