"""The one configuration file, /etc/vfio-advisor/config.toml, for all three
commands: its path, the defaults (as data, also rendered into the file that
`install` writes), validation, and the ignore policy.

The hook, `advise` and the daemon all apply `[daemon] disabled_rules`, the
`[domains.NAME] ignore` lists and the domain's own <metadata> ignores through
`IgnorePolicy`, so one file means the same to all of them.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from vfio_advisor.errors import UsageError

DEFAULT_CONFIG_PATH = "/etc/vfio-advisor/config.toml"
DEFAULT_STATE_DIR = "/var/lib/vfio-advisor"
MAX_CONFIG_BYTES = 1 << 20  # far above any real config; bounds what the hook reads


class Config(NamedTuple):
    # [daemon]
    connect: str = "qemu:///system"
    host_root: str = "/"
    interval: float = 5.0
    # vfio-pci starts every device on INTx; the guest driver switches it to
    # MSI/MSI-X as it loads (QEMU hw/vfio/pci.c vfio_msi_enable/vfio_msix_enable
    # tear INTx down), so INTx within the first minute is normal boot.
    settle: float = 60.0
    # A healthy INTx device rarely passes a few thousand interrupts/s; an
    # unacknowledged level-triggered line re-fires as fast as the CPU takes
    # it (the kernel's own spurious-IRQ detector, kernel/irq/spurious.c,
    # disables a line after 99,900 of 100,000 unhandled ones).
    storm_rate: float = 20000.0
    storm_samples: int = 3  # samples in a row above storm_rate: one burst is not a storm
    disabled: frozenset[str] = frozenset()  # [daemon] disabled_rules
    ignores: dict = {}  # domain name -> frozenset of rule IDs or slugs ([domains.NAME] ignore)
    state_dir: str | None = DEFAULT_STATE_DIR
    metrics_file: str | None = None
    # [hook]
    hook_timeout: float = 10.0
    hook_block_on_error: bool = False
    hook_host_root: str = "/"

    @property
    def policy(self) -> IgnorePolicy:
        return IgnorePolicy(self.disabled, self.ignores)


DEFAULTS = Config()

# (section, key in the file, field, type) for the scalar settings.
_SCALARS = (
    ("daemon", "interval", "interval", float),
    ("daemon", "settle", "settle", float),
    ("daemon", "storm_rate", "storm_rate", float),
    ("daemon", "storm_samples", "storm_samples", int),
    ("daemon", "connect", "connect", str),
    ("daemon", "host_root", "host_root", str),
    ("daemon", "state_dir", "state_dir", str),
    ("daemon", "metrics_file", "metrics_file", str),
    ("hook", "timeout", "hook_timeout", float),
    ("hook", "block_on_error", "hook_block_on_error", bool),
    ("hook", "host_root", "hook_host_root", str),
)


class IgnorePolicy(NamedTuple):
    """Which rules not to report for a domain: the config's disabled rules,
    its [domains.NAME] ignore list, and the domain's <metadata> ignores."""

    disabled: frozenset[str] = frozenset()
    ignores: dict = {}

    def names_for(self, domain) -> frozenset[str]:
        """IDs or slugs ignored for `domain` (a facts.domain.Domain or None)."""
        if domain is None:
            return self.disabled
        return self.disabled | self.ignores.get(domain.name, frozenset()) | domain.ignored_rules

    def ignores_rule(self, rule, domain) -> bool:
        """The one test every shell applies: the rule, or a rule whose
        finding it builds on (Rule.builds_on), is ignored for `domain`."""
        return rule.silenced_by(self.names_for(domain))

    def unknown_in_metadata(self, domain) -> list[str]:
        """One line per rule the domain's own <metadata> ignores that no rule
        answers to. Said as a warning by each command, never an error: the
        domain XML is the user's, and it must not stop advice or a VM start."""
        if domain is None:
            return []
        return [f"{domain.name}: <metadata> ignore: {line}; it silences nothing"
                for line in unknown_rule_names(domain.ignored_rules)]


def unknown_rule_names(names) -> list[str]:
    """One line per name in `names` that is no rule's ID or slug, naming the
    nearest one that is (difflib). Names match exactly, as Rule.named_in
    compares them: an ID in lower case silences nothing, so it is unknown
    too (and its nearest is the ID in upper case). Retired IDs stay accepted: a config that was valid
    before an upgrade must not stop the daemon after it."""
    if not names:
        return []
    from vfio_advisor.rules import RETIRED, RULES  # noqa: PLC0415 - the hook pays only with a config

    known = {r.id: f"{r.id} ({r.slug})" for r in RULES}
    known.update({r.slug: f"{r.slug} ({r.id})" for r in RULES})
    unknown = sorted(n for n in names if n not in known and n not in RETIRED)
    if not unknown:
        return []
    import difflib  # noqa: PLC0415 - only for a name that is wrong

    folded = {k.lower(): k for k in known}
    lines = []
    for name in unknown:
        # cutoff 0.4, below difflib's 0.6: an ID with two digits mistyped
        # scores only 0.5 against the real one (SequenceMatcher.ratio of two
        # six-character strings sharing four), and still means that ID.
        nearest = difflib.get_close_matches(name.lower(), folded, n=1, cutoff=0.4)
        lines.append(f'unknown rule "{name}", nearest: {known[folded[nearest[0]]]}' if nearest
                     else f'unknown rule "{name}" (`vfio-advisor rules` lists them)')
    return lines


def config_rule_problems(cfg: Config) -> list[str]:
    """unknown_rule_names() over [daemon] disabled_rules and every
    [domains.NAME] ignore, each line saying where."""
    lines = [f"[daemon] disabled_rules: {line}" for line in unknown_rule_names(cfg.disabled)]
    for name in sorted(cfg.ignores):
        lines += [f"[domains.{name}] ignore: {line}" for line in unknown_rule_names(cfg.ignores[name])]
    return lines


def _read(path: str, missing_ok: bool = False) -> dict:
    import tomllib  # noqa: PLC0415 - the hook pays for it only when a config exists

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        if path != DEFAULT_CONFIG_PATH and not missing_ok:
            raise UsageError(f"config file {path} not found") from None
        return {}
    except OSError as exc:
        raise UsageError(f"config file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"config file {path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return tomllib.loads(data.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path}: {exc}") from None


def _rule_list(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise UsageError(f"{where} must be a list of rule IDs")
    return frozenset(value)


def parse_config(doc: dict, path: str = "config", strict: bool = True) -> Config:
    """Validate a parsed TOML document. Raises UsageError with one line.
    strict=False lets rule names that no rule answers to through (the hook
    reports them with config_rule_problems() and keeps the rest)."""
    values: dict[str, Any] = dict(DEFAULTS._asdict())
    sections = {}
    for name in ("daemon", "hook"):
        section = doc.get(name, {})
        if not isinstance(section, dict):
            raise UsageError(f"config file {path}: [{name}] must be a table")
        sections[name] = section
    for section, key, fieldname, kind in _SCALARS:
        if key not in sections[section]:
            continue
        raw = sections[section][key]
        if kind is bool:
            if not isinstance(raw, bool):
                raise UsageError(f"config file {path}: [{section}] {key} must be true or false")
            values[fieldname] = raw
            continue
        try:
            if isinstance(raw, bool) or (kind is not str and isinstance(raw, str)):
                raise TypeError
            values[fieldname] = kind(raw)
        except (TypeError, ValueError):
            raise UsageError(f"config file {path}: [{section}] {key} must be a {kind.__name__}") from None
    if "disabled_rules" in sections["daemon"]:
        values["disabled"] = _rule_list(sections["daemon"]["disabled_rules"],
                                        f"config file {path}: [daemon] disabled_rules")
    domains = doc.get("domains", {})
    if not isinstance(domains, dict):
        raise UsageError(f"config file {path}: [domains] must be a table of [domains.NAME] tables")
    ignores = {}
    for name, table in domains.items():
        ignore = table.get("ignore", []) if isinstance(table, dict) else None
        ignores[name] = _rule_list(ignore, f"config file {path}: [domains.{name}] ignore")
    values["ignores"] = ignores
    cfg = validate(Config(**values))
    problems = (unknown_keys(doc) + config_rule_problems(cfg)) if strict else []
    if problems:
        raise UsageError(f"config file {path}: " + "; ".join(problems))
    return cfg


# What each table may hold. TOML (tomllib) accepts any key, so a misspelt
# one ("disable_rules", "[domain.win11]") would otherwise be dropped without
# a word and the setting the user meant would silently not apply.
# In the order the man page lists them.
KEYS_BY_TABLE: dict[str, tuple[str, ...]] = {
    "daemon": (*(key for section, key, _, _ in _SCALARS if section == "daemon"), "disabled_rules"),
    "hook": tuple(key for section, key, _, _ in _SCALARS if section == "hook"),
}
DOMAIN_KEYS = ("ignore",)


def _unknown(names, known, where: str) -> list[str]:
    import difflib  # noqa: PLC0415 - only for a key that is wrong
    lines = []
    for name in sorted(set(names) - known):
        nearest = difflib.get_close_matches(name, sorted(known), n=1)
        lines.append(f'{where}unknown key "{name}"' + (f", nearest: {nearest[0]}" if nearest
                                                       else f" (valid: {', '.join(sorted(known))})"))
    return lines


def unknown_keys(doc: dict) -> list[str]:
    """One line per key or table the file has and no setting reads."""
    lines = _unknown(doc, {"daemon", "hook", "domains"}, "")
    for table, known in KEYS_BY_TABLE.items():
        if isinstance(doc.get(table), dict):
            lines += _unknown(doc[table], set(known), f"[{table}] ")
    domains = doc.get("domains")
    for name, table in (domains.items() if isinstance(domains, dict) else ()):
        if isinstance(table, dict):
            lines += _unknown(table, set(DOMAIN_KEYS), f"[domains.{name}] ")
    return lines


def validate(cfg: Config) -> Config:
    # (the setting, whether its value is out of range, the range) in the
    # order the file lists them: the message names the one that is wrong.
    bounds = (
        ("interval", not 0 < cfg.interval <= 3600, "in (0, 3600] s"),
        ("settle", not cfg.settle >= 0, ">= 0 s"),
        ("storm_rate", not cfg.storm_rate > 0, "> 0 per second"),
        ("storm_samples", cfg.storm_samples < 1, ">= 1"),
        ("[hook] timeout", not 0 < cfg.hook_timeout, "> 0 seconds"),
    )
    for name, wrong, allowed in bounds:
        value = getattr(cfg, {"[hook] timeout": "hook_timeout"}.get(name, name))
        if wrong or (isinstance(value, float) and not math.isfinite(value)):
            raise UsageError(f"{name} must be {allowed}, not {value}")
    return cfg


def load_config(path: str | None = DEFAULT_CONFIG_PATH, overrides: dict | None = None,
                missing_ok: bool = False, strict: bool = True) -> Config:
    """The file (a missing default file is the defaults; a missing file named
    on purpose is an error unless `missing_ok`), then the non-None
    `overrides` on top. strict: as parse_config."""
    cfg = parse_config(_read(path, missing_ok), path, strict) if path else DEFAULTS
    extra = {k: v for k, v in (overrides or {}).items() if v is not None}
    return validate(cfg._replace(**extra)) if extra else cfg


def load_config_leniently(path: str) -> tuple[Config, list[str]]:
    """For the hook, which must never stop a VM start over its config: the
    file's settings (a missing file: the defaults), with every key no setting
    reads and every rule name no rule answers to set aside as one problem
    line each instead of refusing the file. A bad value still raises."""
    doc = _read(path, missing_ok=True)
    cfg = parse_config(doc, path, strict=False)
    return cfg, unknown_keys(doc) + config_rule_problems(cfg)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (frozenset, list, tuple)):
        return "[" + ", ".join(f'"{v}"' for v in sorted(value)) + "]"
    return repr(value)


def render_config_file(cfg: Config = DEFAULTS) -> str:
    """The commented config file `install` writes, from the defaults."""
    v = {k: _toml(x) for k, x in cfg._asdict().items() if not isinstance(x, dict)}
    # The examples name real rules, found by slug: rule IDs are spelt in rules/ only.
    from vfio_advisor.rules import lookup  # noqa: PLC0415 - only install renders the file

    affinity_overlap = lookup("vfio-irq-affinity-overlap").id
    exclusive_line = lookup("exclusive-intx-line-required").id
    return f"""\
# vfio-advisor configuration (TOML). The daemon rereads it on SIGHUP
# (systemctl reload vfio-advisor); command-line flags win over it.
# `vfio-advisor advise` and the libvirt hook read it too: disabled_rules and
# the per-domain ignores apply to all three.

[daemon]
# Seconds between two reads of /proc/interrupts while a watched domain runs.
interval = {v['interval']}
# Seconds after a domain starts before INTx counts as the guest's choice
# (vfio-pci starts every device on INTx; drivers switch to MSI as they load).
settle = {v['settle']}
# INTx per second that count as a storm, and for how many samples in a row.
storm_rate = {v['storm_rate']}
storm_samples = {v['storm_samples']}
# Rules (IDs or slugs) never to report.
disabled_rules = {v['disabled']}
# metrics_file = "/var/lib/prometheus/node-exporter/vfio-advisor.prom"

# Per-domain ignores (also possible in the domain's own <metadata>):
# [domains.win11]
# ignore = ["{affinity_overlap}"]

[hook]
# Stop analysing after this many seconds; the VM start goes on regardless.
timeout = {v['hook_timeout']}
# true: refuse to start a domain with error-level findings (such as {exclusive_line},
# a device that will fail with "Device or resource busy"). Off by default:
# the hook only advises.
block_on_error = {v['hook_block_on_error']}
"""
