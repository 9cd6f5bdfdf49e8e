"""Output sinks: terminal text, JSON, journald. They only format findings."""
