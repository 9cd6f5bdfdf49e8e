"""`vfio-advisor fix`: exact domain XML changes for findings that have one,
each verified (re-analysis with the same host facts, libvirt's schema,
libvirt's test driver) before it is offered.

A rule is fixable here when its `fix` names one of fix/planner.py's
planners (rules/remedies.py domain_xml_fix). API for other parts (advise):
    from vfio_advisor.fix.planner import Analyzer, plan_domain, fix_for_finding
    plan = plan_domain(Analyzer(host_root_dir), xml_text)   # DomainPlan
    plan.fix_for_finding(finding) -> Change | None
    fix_for_finding(plan, finding) -> dict | None  (the "fix" object for JSON)
"""
