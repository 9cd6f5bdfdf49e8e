"""Print the system tier's measured times at the end of the run."""


def pytest_terminal_summary(terminalreporter):
    from tests.system.test_system import TIMINGS

    if TIMINGS:
        terminalreporter.section("system tier times (s)")
        for name, value in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {value}")
