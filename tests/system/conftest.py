"""Print the system tiers' measured times at the end of the run."""


def pytest_terminal_summary(terminalreporter):
    from tests.system.test_guest_loop_nested import SUMMARY, TIMINGS as NESTED
    from tests.system.test_system import TIMINGS

    for title, timings in (("system tier times (s)", TIMINGS), ("guest loop on real vfio: times (s)", NESTED)):
        if timings:
            terminalreporter.section(title)
            for name, value in timings.items():
                terminalreporter.write_line(f"{name}: {value}")
    if SUMMARY:
        terminalreporter.section("guest loop on real vfio: what L1 saw")
        for line in SUMMARY:
            terminalreporter.write_line(line)
