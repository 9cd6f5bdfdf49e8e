/* vfio-advisor's Cockpit page: the host view (#/) and one VM's view (#/vm/NAME).
 *
 * It talks to the product in two ways only: cockpit.spawn of
 * `vfio-advisor ... --format json`, and cockpit.file of the daemon's status
 * file (docs/cockpit.md has its format). Everything drawn is built with DOM
 * calls (no innerHTML of command output) and SVG presentation attributes:
 * Cockpit's CSP (default-src 'self') refuses inline scripts and style
 * attributes. Every failure ends in a message on the page. */
"use strict";

(function () {
    const SVG_NS = "http://www.w3.org/2000/svg";
    const SEVERITIES = ["error", "warning", "info"];
    const STATUS_POLL_MS = 2000;

    const manifest = (cockpit.manifests && cockpit.manifests["vfio-advisor"]) || {};
    const config = Object.assign({ status_file: "/var/lib/vfio-advisor/status.json", connect: null,
                                   host_root: null, state_dir: null }, manifest.config || {});

    const state = {
        status: null, // the parsed status file
        statusProblem: null, // why there is no usable one
        statusFile: null, // cockpit.file handle
        rules: null, // rule id -> {title, explanation, ...} (vfio-advisor rules --format json)
        advice: null, // advise --format json
        adviceProblem: null,
        running: 0, // spawns in flight (the test waits for 0)
        view: null,
        admin: null, // cockpit.permission({admin: true}).allowed
    };

    /* ---- small DOM helpers ---------------------------------------------- */

    function el(tag, attrs, ...children) {
        const node = document.createElement(tag);
        for (const [k, v] of Object.entries(attrs || {})) {
            if (v === null || v === undefined || v === false) continue;
            if (k === "onclick") node.addEventListener("click", v);
            else node.setAttribute(k, v === true ? "" : String(v));
        }
        for (const c of children.flat()) {
            if (c === null || c === undefined || c === false) continue;
            node.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
        }
        return node;
    }

    function svg(tag, attrs, ...children) {
        const node = document.createElementNS(SVG_NS, tag);
        for (const [k, v] of Object.entries(attrs || {}))
            if (v !== null && v !== undefined) node.setAttribute(k, String(v));
        for (const c of children.flat()) {
            if (c === null || c === undefined) continue;
            node.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
        }
        return node;
    }

    function alert(kind, text, id) {
        return el("div", { class: "va-alert va-" + kind, "data-alert": id || kind }, text);
    }

    function badge(severity, text) {
        return el("span", { class: "va-badge va-sev-" + severity }, text || severity);
    }

    function setMessages(...nodes) {
        const box = document.getElementById("messages");
        box.replaceChildren(...nodes.flat().filter(Boolean));
    }

    function fmtTime(t) {
        return t ? new Date(t * 1000).toLocaleTimeString() : "never";
    }

    /* ---- talking to vfio-advisor ------------------------------------------ */

    // --connect / --host-root: the manifest's config (an override file in
    // /etc/cockpit/vfio-advisor.override.json) first, else what the daemon
    // watches (its status file), else the command's own defaults.
    function target(withHostRoot) {
        const daemon = (state.status && state.status.daemon) || {};
        const connect = config.connect || daemon.connect;
        const hostRoot = config.host_root || daemon.host_root;
        const args = [];
        if (connect) args.push("--connect", connect);
        if (withHostRoot !== false && hostRoot && hostRoot !== "/") args.push("--host-root", hostRoot);
        return args;
    }

    class CommandError extends Error {
        constructor(message, kind) {
            super(message);
            this.kind = kind; // missing | denied | failed | bad-output
        }
    }

    /* Run `vfio-advisor ARGS`; resolve with its parsed JSON when it exits with
       one of `okExits` (advise exits 1 when it found something). cockpit.spawn
       rejects a non-zero exit with (ProcessError, output), the output as the
       second argument of its own deferred's reject, not a native Promise's:
       so in cockpit 287 (base1/cockpit.js) and still in 337 (the "close"
       handler of spawn's channel, `reject(new ProcessError(...), output)`);
       hence `.then(ok, fail)` on that deferred, never `await`, which would
       drop the output. */
    function run(args, options) {
        const opts = Object.assign({ okExits: [0], superuser: null }, options || {});
        const argv = ["vfio-advisor"].concat(args);
        const spawnOpts = { err: "message" };
        if (opts.superuser) spawnOpts.superuser = opts.superuser;
        state.running += 1;
        document.body.setAttribute("data-running", String(state.running));
        return new Promise((resolve, reject) => {
            function finish(exit, output, ex) {
                if (ex && ex.problem === "not-found")
                    return reject(new CommandError("vfio-advisor is not installed here: cockpit-bridge found no " +
                                                   "vfio-advisor program in its PATH.", "missing"));
                if (ex && ex.problem === "access-denied")
                    return reject(new CommandError("Not permitted: this needs administrative access.", "denied"));
                if (ex && ex.problem)
                    return reject(new CommandError("vfio-advisor " + args[0] + " could not run: " +
                                                   cockpit.message(ex), "failed"));
                if (!opts.okExits.includes(exit)) {
                    const text = ((ex && ex.message) || "").trim().split("\n").filter(Boolean).pop() ||
                        "exit status " + exit;
                    return reject(new CommandError(text, "failed", exit));
                }
                try {
                    resolve(JSON.parse(output));
                } catch (e) {
                    reject(new CommandError("vfio-advisor " + args[0] + " printed no JSON (" + e.message + ")",
                                            "bad-output"));
                }
            }
            cockpit.spawn(argv, spawnOpts).then(
                (output) => finish(0, output, null),
                (ex, output) => finish(ex && ex.exit_status !== undefined ? ex.exit_status : -1, output || "", ex));
        }).finally(() => {
            state.running -= 1;
            document.body.setAttribute("data-running", String(state.running));
        });
    }

    /* ---- the daemon's status file ------------------------------------------ */

    function statusMessage() {
        if (state.statusProblem)
            return alert("warning", state.statusProblem, "daemon");
        const daemon = state.status.daemon || {};
        if (!daemon.running)
            return alert("warning", "The vfio-advisor daemon stopped at " + fmtTime(daemon.updated) +
                         ": interrupt rates are not followed (systemctl start vfio-advisor).", "daemon");
        const stale = Math.max(3 * (daemon.interval || 5), 30);
        if (daemon.updated && Date.now() / 1000 - daemon.updated > stale)
            return alert("warning", "The vfio-advisor daemon has not written its status since " +
                         fmtTime(daemon.updated) + ": it is not running or stuck.", "daemon");
        return null;
    }

    const STATUS_SCHEMA = "vfio-advisor/status/2";

    /* The file says each sample's time once (doc.times, oldest first) and
     * each device's mode once a run (dev.modes: [[time, mode], ...], the
     * mode from that sample on); a device's rates are its rates at the last
     * rates.length times. This gives each device back the points the plots
     * draw, [time, rate, mode] (device_points in sinks/status.py does the
     * same for the tests). */
    function addPoints(doc) {
        const times = doc.times || [];
        for (const dev of doc.devices || []) {
            const rates = dev.rates || [];
            const runs = dev.modes || [];
            const first = times.length - rates.length;
            if (first < 0)
                throw new Error(dev.bdf + " has more rates than times");
            let run = 0;
            dev.points = rates.map((rate, i) => {
                const t = times[first + i];
                // A run after the first starts at a sample of the window: found by its time.
                if (run + 1 < runs.length && runs[run + 1][0] === t)
                    run++;
                return [t, rate, runs.length ? runs[run][1] : dev.mode];
            });
        }
    }

    function parseStatus(content) {
        if (content === null) {
            state.status = null;
            state.statusProblem = "The vfio-advisor daemon is not running (no status file " + config.status_file +
                "): the page shows advise's findings, without interrupt rates.";
            return;
        }
        try {
            const doc = JSON.parse(content);
            if (!doc || doc.schema !== STATUS_SCHEMA)
                throw new Error("schema " + (doc && doc.schema));
            addPoints(doc);
            state.status = doc;
            state.statusProblem = null;
        } catch (e) {
            state.status = null;
            state.statusProblem = "The daemon's status file " + config.status_file + " is not readable as " +
                STATUS_SCHEMA + " (" + e.message + ").";
        }
    }

    function readStatus() {
        if (!state.statusFile)
            state.statusFile = cockpit.file(config.status_file, { superuser: "try" });
        return new Promise((resolve) => {
            state.statusFile.read().then((content) => {
                parseStatus(content);
                resolve();
            }, (ex) => {
                state.status = null;
                state.statusProblem = "Cannot read the daemon's status file " + config.status_file + ": " +
                    cockpit.message(ex);
                resolve();
            });
        });
    }

    /* ---- routing ------------------------------------------------------------ */

    function route() {
        const path = cockpit.location.path;
        if (path.length >= 2 && path[0] === "vm")
            return { kind: "vm", name: path[1] };
        return { kind: "host" };
    }

    function vmLink(name) {
        return el("a", { href: "#/vm/" + encodeURIComponent(name), "data-vm-link": name,
                         onclick: (ev) => { ev.preventDefault(); cockpit.location.go(["vm", name]) } }, name);
    }

    function machinesLink(name) {
        // cockpit-machines' own page for the VM (pkg/machines, "vm?name=...&connection=system"),
        // where the bridge lists it (a jump to a missing package is Cockpit's "not found" page).
        if (!cockpit.manifests || !cockpit.manifests.machines)
            return el("span", { class: "va-muted", "data-machines-link": name }, "(cockpit-machines not installed)");
        return el("a", { href: "/machines#vm?name=" + encodeURIComponent(name) + "&connection=system",
                         "data-machines-link": name,
                         onclick: (ev) => {
                             ev.preventDefault();
                             cockpit.jump("/machines#vm?name=" + encodeURIComponent(name) + "&connection=system");
                         } }, "Open in Virtual machines");
    }

    function breadcrumb(view) {
        const nav = document.getElementById("breadcrumb");
        if (view.kind === "host") {
            nav.replaceChildren(el("strong", {}, "VFIO interrupts"));
        } else {
            nav.replaceChildren(el("a", { href: "#/", onclick: (ev) => { ev.preventDefault(); cockpit.location.go([]) } },
                                   "VFIO interrupts"),
                                el("span", { class: "va-sep" }, "›"), el("strong", {}, view.name));
        }
    }

    /* ---- findings ----------------------------------------------------------- */

    function findingNode(f) {
        const rule = (state.rules && state.rules[f.rule]) || {};
        return el("details", { class: "va-finding", "data-finding": f.rule, "data-severity": f.severity,
                               "data-subject": f.subject || "" },
                  el("summary", {}, badge(f.severity), el("strong", {}, f.rule), " ",
                     rule.title || f.slug || "", f.subject ? el("span", { class: "va-muted" }, " · " + f.subject) : null),
                  el("p", {}, f.message),
                  f.remedy ? el("p", {}, el("strong", {}, "Remedy: "), f.remedy) : null,
                  rule.explanation ? el("p", { class: "va-muted" }, el("strong", {}, "Why: "), rule.explanation) : null);
    }

    function sortFindings(list) {
        return list.slice().sort((a, b) => SEVERITIES.indexOf(a.severity) - SEVERITIES.indexOf(b.severity) ||
                                 a.rule.localeCompare(b.rule));
    }

    /* ---- the host view ------------------------------------------------------ */

    function yesNo(v, yes, no) {
        return v === true ? yes : v === false ? no : "unknown";
    }

    function renderHost() {
        const content = document.getElementById("content");
        const nodes = [];
        if (state.adviceProblem) {
            nodes.push(alert("error", state.adviceProblem, "advise"));
            content.replaceChildren(...nodes);
            return;
        }
        const advice = state.advice;
        const host = advice.host || {};
        const sh = (state.status && state.status.host) || {};
        const iommu = sh.iommu || {};
        const posting = sh.posting;
        nodes.push(el("section", { class: "va-card", id: "host-state" },
                      el("h2", {}, "Host"),
                      el("dl", { class: "va-grid" },
                         el("dt", {}, "IOMMU"),
                         el("dd", { "data-field": "iommu" }, iommu.vendor ? iommu.vendor + " (" + (iommu.units || []).length +
                            " units), DMA remapping " + yesNo(iommu.dma_remapping, "on", "off")
                            : (host.iommu_groups ? host.iommu_groups + " IOMMU groups" : "no IOMMU groups")),
                         el("dt", {}, "Interrupt remapping"),
                         el("dd", { "data-field": "interrupt-remapping" },
                            yesNo(host.interrupt_remapping, "on", "off") +
                            (host.allow_unsafe_interrupts ? " (allow_unsafe_interrupts=1: unsafe)" : "")),
                         el("dt", {}, "Posted interrupts"),
                         el("dd", { "data-field": "posting" }, posting ? posting.verdict.toLowerCase().replace(/_/g, " ") +
                            (posting.evidence && posting.evidence.length ? " — " + posting.evidence[0] : "")
                            : "unknown (the daemon reports it once it follows a VM)"),
                         el("dt", {}, "Kernel command line"),
                         el("dd", { class: "va-muted" }, host.cmdline || "unknown"))));
        const domains = (advice.domains || []).filter((d) => (d.devices || []).length > 0);
        const rows = domains.map((d) => {
            const counts = {};
            for (const f of d.findings || []) counts[f.severity] = (counts[f.severity] || 0) + 1;
            return el("tr", { "data-domain": d.name },
                      el("td", {}, vmLink(d.name)),
                      el("td", {}, d.machine || ""),
                      el("td", {}, String((d.devices || []).length)),
                      el("td", { "data-counts": SEVERITIES.map((s) => s + "=" + (counts[s] || 0)).join(" ") },
                         SEVERITIES.filter((s) => counts[s]).map((s) => badge(s, counts[s] + " " + s)),
                         (d.findings || []).length ? null : el("span", { class: "va-muted" }, "no findings")),
                      el("td", {}, machinesLink(d.name)));
        });
        nodes.push(el("section", { class: "va-card", id: "domains" },
                      el("h2", {}, "Virtual machines with assigned PCI devices"),
                      rows.length ? el("table", { class: "va-table" },
                                       el("thead", {}, el("tr", {}, el("th", {}, "VM"), el("th", {}, "Machine"),
                                                          el("th", {}, "Devices"), el("th", {}, "Findings"), el("th", {}, ""))),
                                       el("tbody", {}, rows))
                          : el("p", { class: "va-muted" }, "No domain has an assigned PCI device.")));
        for (const d of domains) {
            if (!(d.findings || []).length) continue;
            nodes.push(el("section", { class: "va-card", "data-domain-findings": d.name },
                          el("h2", {}, vmLink(d.name)), sortFindings(d.findings).map(findingNode)));
        }
        for (const [what, why] of advice.errors || [])
            nodes.push(alert("warning", what + ": " + why, "advise-error"));
        content.replaceChildren(...nodes);
    }

    /* ---- the VM view -------------------------------------------------------- */

    function renderVm(view, parts) {
        const content = document.getElementById("content");
        const nodes = [];
        const domain = parts.domain;
        if (!domain) {
            content.replaceChildren(alert("error", parts.problem, "domain"));
            return;
        }
        const statusDevices = ((state.status && state.status.devices) || []).filter((d) => d.domain === view.name);
        const guestDevices = {};
        for (const g of (parts.guest && parts.guest.devices) || []) guestDevices[g.host_bdf] = g;

        nodes.push(el("section", { class: "va-card", id: "vm-summary" },
                      el("h2", {}, view.name, " ", machinesLink(view.name)),
                      el("dl", { class: "va-grid" },
                         el("dt", {}, "Machine"), el("dd", {}, (domain.machine || "") + " (" + (domain.chipset || "") + ")"),
                         el("dt", {}, "Guest OS"), el("dd", {}, domain.guest_os || "unknown"))));

        // Each assigned device.
        const deviceRows = (domain.devices || []).map((dev) => {
            const hi = dev.host_interrupts || {};
            const live = statusDevices.find((s) => s.bdf === dev.host_address);
            const g = guestDevices[dev.host_address];
            const sharers = (hi.shared_with || []).length ? hi.shared_with.join(", ") : "none";
            const guestSharers = (dev.guest_intx && dev.guest_intx.shares_with || []);
            return el("tr", { "data-device": dev.host_address },
                      el("td", {}, el("strong", {}, dev.host_address), el("br"),
                         el("span", { class: "va-muted" }, dev.name || "")),
                      el("td", { "data-field": "host-mode", "data-advise-mode": hi.mode || "unknown" },
                         ...hostMode(hi.mode, live)),
                      el("td", { "data-field": "vectors" }, (hi.irqs || []).join(", ") || "none"),
                      el("td", { "data-field": "sharers" }, "host: " + sharers, el("br"),
                         "guest: " + (guestSharers.length ? guestSharers.join(", ") : "none")),
                      el("td", { "data-field": "guest-mode", title: g && g.detail ? g.detail : null },
                         g ? (g.guest_mode || "unknown") + (g.guest_driver ? " (" + g.guest_driver + ")" : "") +
                             (g.verdict ? " — " + g.verdict.toLowerCase().replace(/_/g, " ") : "")
                           : el("span", { class: "va-muted" }, parts.guestNote)));
        });
        nodes.push(el("section", { class: "va-card", id: "devices" },
                      el("h2", {}, "Assigned devices"),
                      parts.guestProblem ? alert("info", parts.guestProblem, "guest") : null,
                      el("table", { class: "va-table" },
                         el("thead", {}, el("tr", {}, el("th", {}, "Device"), el("th", {}, "Host mode"),
                                            el("th", {}, "Host vectors"), el("th", {}, "Line sharers"),
                                            el("th", {}, "Guest mode (agent)"))),
                         el("tbody", {}, deviceRows))));

        // Findings, with the fix.
        const findingsCard = el("section", { class: "va-card", id: "findings" }, el("h2", {}, "Findings"));
        if ((domain.findings || []).length) findingsCard.append(...sortFindings(domain.findings).map(findingNode));
        else findingsCard.append(el("p", { class: "va-muted" }, "No findings."));
        findingsCard.append(fixNode(view.name, parts));
        nodes.push(findingsCard);

        // The guest INTx map.
        const mapCard = el("section", { class: "va-card", id: "intx-map" }, el("h2", {}, "Guest INTx map"));
        if (parts.irqs) mapCard.append(drawMap(parts.irqs));
        else mapCard.append(alert("warning", parts.irqsProblem, "guest-irqs"));
        nodes.push(mapCard);

        nodes.push(ratesCard(view.name));
        content.replaceChildren(...nodes);
    }

    /* One plot per device the daemon follows in this domain, from the status
       file; redrawn whole at each poll of the file. */
    /* A device's host mode: the daemon's latest sample where it follows the
       device, else what advise read when the view was drawn. */
    function hostMode(adviseMode, live) {
        return [(live ? live.mode : adviseMode) || "unknown",
                live ? el("span", { class: "va-muted" }, " (daemon)") : ""];
    }

    function ratesCard(name) {
        const card = el("section", { class: "va-card", id: "rates" }, el("h2", {}, "Interrupt rates"));
        const devices = ((state.status && state.status.devices) || []).filter((d) => d.domain === name);
        const findings = ((state.status && state.status.findings) || []).filter((f) => f.domain === name);
        const note = statusMessage();
        if (note) card.append(note);
        if (state.status && !devices.length && !note)
            card.append(alert("info", "The daemon does not follow " + name + " (it follows running VMs only).",
                              "not-followed"));
        for (const dev of devices)
            card.append(el("h3", {}, dev.bdf + " — now " + dev.mode),
                        drawPlot(dev, findings.filter((f) => !f.subject || f.subject === dev.bdf)));
        return card;
    }

    function diffNode(text) {
        return el("pre", { class: "va-diff", "data-diff": "" }, text.split("\n").map((line) =>
            el("span", { class: line.startsWith("+") && !line.startsWith("+++") ? "va-add"
                         : line.startsWith("-") && !line.startsWith("---") ? "va-del" : null }, line + "\n")));
    }

    function fixNode(name, parts) {
        const box = el("div", { id: "fix" }, el("h3", {}, "Fix (domain XML)"));
        if (parts.fixProblem) {
            box.append(alert("warning", parts.fixProblem, "fix"));
            return box;
        }
        const plan = parts.fix;
        for (const u of plan.unfixed || [])
            box.append(el("p", { class: "va-muted", "data-unfixed": u.rule }, u.rule + ": no verified change — " + u.reason));
        for (const r of plan.rejected || [])
            box.append(el("p", { class: "va-muted", "data-rejected": r.rule || "" },
                          (r.rule || "") + ": change rejected — " + (r.reason || "")));
        if (!plan.diff) {
            box.append(el("p", { "data-no-diff": "" }, "No domain XML change to make."));
            return box;
        }
        box.append(diffNode(plan.diff));
        const apply = el("button", { type: "button", class: "va-button va-danger", id: "apply-fix" }, "Apply…");
        apply.addEventListener("click", () => confirmApply(name, plan));
        box.append(apply);
        if (state.admin === false)
            box.append(el("p", { class: "va-muted" }, "Applying needs administrative access (turn it on in Cockpit's top bar)."));
        box.append(el("div", { id: "apply-result" }));
        return box;
    }

    function confirmApply(name, plan) {
        const dialog = document.getElementById("dialog");
        document.getElementById("dialog-title").textContent = "Apply this change to " + name + "?";
        document.getElementById("dialog-body").replaceChildren(
            el("p", {}, "vfio-advisor fix --apply defines the changed XML as " + name + "'s persistent " +
               "configuration (never live: a running VM gets it at its next start) and saves the previous XML first."),
            diffNode(plan.diff));
        const ok = document.getElementById("dialog-ok");
        const cancel = document.getElementById("dialog-cancel");
        ok.textContent = "Apply";
        dialog.hidden = false;
        const close = () => {
            dialog.hidden = true;
            ok.onclick = cancel.onclick = null;
        };
        cancel.onclick = close;
        ok.onclick = () => {
            close();
            applyFix(name);
        };
    }

    function applyFix(name) {
        const out = document.getElementById("apply-result");
        out.replaceChildren(el("p", { class: "va-loading" }, "Applying…"));
        const args = ["fix", name].concat(target()).concat(["--apply", "--format", "json"]);
        if (config.state_dir) args.push("--state-dir", config.state_dir);
        // superuser "require": only Cockpit's administrative access may change
        // a domain; an unprivileged session gets access-denied, nothing runs.
        run(args, { superuser: "require" }).then((result) => {
            const d = (result.domains || [])[0] || {};
            const applied = d.applied;
            if (!applied) {
                out.replaceChildren(alert("warning", "Nothing was applied to " + name + ".", "apply"));
                return;
            }
            out.replaceChildren(alert("success", "Applied to " + name + "'s persistent configuration, effective " +
                                      applied.takes_effect + ". The previous XML was saved as " + applied.backup +
                                      "; restore with: " + applied.restore, "apply"));
        }, (err) => {
            const text = err.kind === "denied"
                ? "Not applied: changing " + name + " needs administrative access. Turn on administrative access " +
                  "in Cockpit's top bar (or log in as an administrator) and try again; nothing was changed."
                : "Not applied: " + err.message;
            out.replaceChildren(alert("error", text, "apply"));
        });
    }

    /* ---- the guest INTx map (SVG) -------------------------------------------- */

    /* Four columns, as the guest's firmware routes INTx (docs: intx-routing):
       function -> root-bus slot pin -> PIRQ link -> IRQ/GSI. Nodes and edges
       carry data-node / data-edge ids so that a test reads the drawing back. */
    function mapGraph(irqs) {
        const nodes = new Map();
        const edges = new Map();
        const add = (id, column, label, extra) => {
            if (!nodes.has(id)) nodes.set(id, Object.assign({ id, column, label, functions: new Set() }, extra || {}));
            return nodes.get(id);
        };
        for (const f of irqs.functions || []) {
            if (!f.pin && f.irq === null) continue; // no INTx at all (bridges, MSI-only models)
            const fn = add("fn:" + f.guest_address, 0, f.guest_address + " " + (f.host_address ? "← " + f.host_address
                : (f.model || f.kind)), { hostdev: f.kind === "hostdev", shared: (f.shares_with || []).length > 0 });
            let prev = fn;
            const hop = (node) => {
                edges.set(prev.id + ">" + node.id, { from: prev.id, to: node.id });
                prev = node;
            };
            if (f.root_slot !== null && f.root_pin) hop(add("pin:" + f.root_slot + ":" + f.root_pin, 1,
                                                            "slot " + f.root_slot + " INT" + f.root_pin));
            if (f.pirq) hop(add("link:" + f.pirq, 2, "PIRQ " + f.pirq));
            if (f.irq !== null) {
                const irq = add("irq:" + f.irq, 3, (irqs.chipset === "q35" ? "GSI " : "IRQ ") + f.irq);
                irq.functions.add(f.guest_address);
                hop(irq);
            }
        }
        for (const n of nodes.values())
            if (n.column === 3 && n.functions.size > 1) n.shared = true;
        for (const e of edges.values())
            e.shared = nodes.get(e.to).column === 3 && nodes.get(e.to).shared;
        return { nodes: [...nodes.values()], edges: [...edges.values()] };
    }

    function drawMap(irqs) {
        const graph = mapGraph(irqs);
        if (!graph.nodes.length)
            return el("p", { class: "va-muted" }, "No guest function uses INTx.");
        const colX = [10, 330, 470, 600];
        const colW = [300, 110, 100, 90];
        const rowH = 26;
        const perColumn = [0, 0, 0, 0];
        for (const n of graph.nodes) {
            n.y = 10 + perColumn[n.column] * rowH;
            perColumn[n.column] += 1;
        }
        const height = 20 + Math.max(...perColumn) * rowH;
        const root = svg("svg", { class: "va-map", width: 710, height, viewBox: "0 0 710 " + height,
                                  role: "img", "aria-label": "Guest INTx routing of " + irqs.domain });
        const byId = Object.fromEntries(graph.nodes.map((n) => [n.id, n]));
        for (const e of graph.edges) {
            const a = byId[e.from];
            const b = byId[e.to];
            const x1 = colX[a.column] + colW[a.column];
            const y1 = a.y + 9;
            const x2 = colX[b.column];
            const y2 = b.y + 9;
            root.append(svg("path", { class: "va-edge" + (e.shared ? " va-shared" : ""), "data-edge": e.from + ">" + e.to,
                                      d: `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}` }));
        }
        for (const n of graph.nodes) {
            const cls = "va-node" + (n.hostdev ? " va-hostdev" : "") + (n.shared ? " va-shared" : "");
            root.append(svg("g", { class: cls, "data-node": n.id, "data-shared": n.shared ? "true" : "false" },
                            svg("rect", { x: colX[n.column], y: n.y, width: colW[n.column], height: 18, rx: 3 }),
                            svg("text", { x: colX[n.column] + 5, y: n.y + 13 }, n.label)));
        }
        const legend = el("p", { class: "va-muted" }, "Function → root-bus slot pin → PIRQ link → IRQ/GSI. " +
                          "Red: a line that several functions share.");
        return el("div", {}, root, legend);
    }

    /* ---- the rate plot (SVG) --------------------------------------------------- */

    function drawPlot(dev, findings) {
        const W = 700;
        const H = 180;
        const left = 60;
        const right = 10;
        const top = 10;
        const bottom = 24;
        const points = dev.points || [];
        const plot = svg("svg", { class: "va-plot", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
                                  "data-plot": dev.bdf, role: "img", "aria-label": "Interrupt rate of " + dev.bdf });
        if (!points.length) {
            plot.append(svg("text", { x: left, y: H / 2 }, "no samples yet"));
            return plot;
        }
        const labelsAt = {};
        const stacked = (kind, t) => {
            const key = kind + Math.round(x(t) / 40);
            labelsAt[key] = (labelsAt[key] || 0) + 1;
            return labelsAt[key] - 1;
        };
        const t0 = points[0][0];
        const t1 = Math.max(points[points.length - 1][0], t0 + 1);
        const rates = points.map((p) => p[1]).filter((r) => r !== null);
        const maxRate = Math.max(1, ...rates) * 1.1;
        const x = (t) => left + (W - left - right) * (t - t0) / (t1 - t0);
        const y = (r) => top + (H - top - bottom) * (1 - r / maxRate);
        // Mode bands behind the line: INTx amber, MSI/MSI-X green.
        for (let i = 0; i < points.length; i++) {
            const end = i + 1 < points.length ? points[i + 1][0] : t1;
            plot.append(svg("rect", { class: "va-mode-" + points[i][2], x: x(points[i][0]), y: top,
                                      width: Math.max(0, x(end) - x(points[i][0])), height: H - top - bottom }));
        }
        for (const frac of [0, 0.5, 1]) {
            const r = maxRate * frac;
            plot.append(svg("line", { class: "va-grid-line", x1: left, x2: W - right, y1: y(r), y2: y(r) }),
                        svg("text", { x: 4, y: y(r) + 4 }, Math.round(r) + "/s"));
        }
        plot.append(svg("line", { class: "va-axis", x1: left, x2: left, y1: top, y2: H - bottom }),
                    svg("line", { class: "va-axis", x1: left, x2: W - right, y1: H - bottom, y2: H - bottom }),
                    svg("text", { x: left, y: H - 6 }, fmtTime(t0)),
                    svg("text", { x: W - right - 70, y: H - 6 }, fmtTime(t1)));
        // The line, broken where the host cannot count (posted MSI: rate null).
        let run = [];
        const flush = () => {
            if (run.length > 1) plot.append(svg("polyline", { class: "va-rate", points: run.join(" ") }));
            run = [];
        };
        for (const [t, r] of points) {
            if (r === null) {
                flush();
                continue;
            }
            run.push(x(t).toFixed(1) + "," + y(r).toFixed(1));
        }
        flush();
        for (const [t, r, mode] of points) {
            plot.append(svg("circle", { class: "va-point", cx: x(t).toFixed(1), cy: r === null ? H - bottom : y(r).toFixed(1),
                                        r: 2, "data-t": t, "data-rate": r === null ? "null" : r, "data-mode": mode }));
        }
        // Findings: a solid mark where one opened, a dashed one where it
        // closed; labels at the same place stack instead of overprinting.
        for (const f of findings) {
            for (const [kind, t] of [["opened", f.opened], ["closed", f.closed]]) {
                if (t === null || t === undefined || t < t0 || t > t1) continue;
                plot.append(svg("line", { class: "va-mark-" + kind, x1: x(t), x2: x(t), y1: top, y2: H - bottom,
                                          "data-mark": kind, "data-rule": f.rule, "data-t": t }),
                            svg("text", { x: x(t) + 3, y: kind === "closed" ? H - bottom - 4 - stacked(kind, t) * 12
                                                                       : top + 10 + stacked(kind, t) * 12 },
                                f.rule + (kind === "closed" ? " closed" : "")));
            }
        }
        return plot;
    }

    /* ---- loading ------------------------------------------------------------- */

    function loadRules() {
        if (state.rules) return Promise.resolve();
        return run(["rules", "--format", "json"]).then((list) => {
            state.rules = Object.fromEntries(list.map((r) => [r.id, r]));
        }, () => { state.rules = {} }); // advise says the same failure more clearly
    }

    function loadAdvice() {
        return run(["advise"].concat(target()).concat(["--format", "json"]), { okExits: [0, 1] }).then((advice) => {
            state.advice = advice;
            state.adviceProblem = null;
        }, (err) => {
            state.advice = null;
            state.adviceProblem = err.kind === "missing" ? err.message
                : "vfio-advisor advise failed: " + err.message;
        });
    }

    function loadVmParts(name) {
        const parts = { domain: null, problem: null };
        const domain = state.advice && (state.advice.domains || []).find((d) => d.name === name);
        if (state.adviceProblem) {
            parts.problem = state.adviceProblem;
            return Promise.resolve(parts);
        }
        if (!domain) {
            parts.problem = "No domain named " + name + " with assigned PCI devices on " +
                (target(false)[1] || "this host") + ": it was removed, renamed, or has no hostdev now.";
            return Promise.resolve(parts);
        }
        parts.domain = domain;
        // guest-irqs exits 1 when it shows a routing warning, with its JSON.
        const irqs = run(["guest-irqs", name].concat(target()).concat(["--format", "json"]), { okExits: [0, 1] }).then(
            (r) => { parts.irqs = r }, (err) => { parts.irqsProblem = "guest-irqs failed: " + err.message });
        const fix = run(["fix", name].concat(target()).concat(["--format", "json"]), { okExits: [0, 1] }).then(
            (r) => { parts.fix = (r.domains || [])[0] || { diff: "" } },
            (err) => { parts.fixProblem = "fix failed: " + err.message });
        // `guest` reads the guest through the QEMU guest agent; older
        // vfio-advisor has no such command, and the agent may not answer.
        parts.guestNote = "not read";
        // `guest` exits 1 when a device's verdict needs action, with its JSON.
        const guest = run(["guest", name].concat(target()).concat(["--format", "json"]), { okExits: [0, 1] }).then((r) => {
            parts.guest = r;
            if (r.agent && r.agent.available === false) {
                parts.guestNote = "agent not available";
                parts.guestProblem = "The QEMU guest agent of " + name + " does not answer: the guest's own " +
                    "interrupt mode is unknown.";
            }
        }, (err) => {
            parts.guestNote = "unknown";
            parts.guestProblem = /invalid choice|unrecognized/.test(err.message)
                ? "This vfio-advisor has no `guest` command: the guest's own interrupt mode is not read."
                : "The guest's own interrupt mode is unknown: " + err.message;
        });
        return Promise.all([irqs, fix, guest]).then(() => parts);
    }

    let generation = 0;

    function render(fullReload) {
        const view = route();
        const mine = ++generation;
        state.view = view;
        breadcrumb(view);
        document.body.setAttribute("data-view", view.kind);
        document.body.setAttribute("data-ready", "false");
        const loads = [readStatus(), loadRules()];
        if (fullReload || !state.advice) loads.push(loadAdvice());
        return Promise.all(loads).then(() => view.kind === "vm" ? loadVmParts(view.name) : null).then((parts) => {
            if (mine !== generation) return;
            if (view.kind === "vm") renderVm(view, parts);
            else renderHost();
            setMessages(statusMessage());
            document.body.setAttribute("data-ready", "true");
        }).catch((e) => {
            // A bug of this page: said on the page, not left as a blank one.
            console.warn("vfio-advisor page:", e);
            setMessages(alert("error", "The page failed: " + (e && e.message ? e.message : String(e)), "page"));
            document.body.setAttribute("data-ready", "true");
        });
    }

    // The daemon's file changes at every sample: redraw the plots and the
    // devices' host modes (a device moves from INTx to MSI while the view is
    // open), not what advise said.
    function pollStatus() {
        if (document.body.getAttribute("data-ready") !== "true" || state.running) return;
        readStatus().then(() => {
            setMessages(statusMessage());
            if (state.view && state.view.kind === "vm") {
                const live = ((state.status && state.status.devices) || []).filter((d) => d.domain === state.view.name);
                document.querySelectorAll("#devices tr[data-device] [data-field=host-mode]").forEach((cell) => {
                    const bdf = cell.closest("tr").getAttribute("data-device");
                    cell.replaceChildren(...hostMode(cell.getAttribute("data-advise-mode"),
                                                     live.find((d) => d.bdf === bdf)));
                });
                const rates = document.getElementById("rates");
                if (!rates) return;
                rates.replaceWith(ratesCard(state.view.name));
            }
        });
    }

    function init() {
        const perm = cockpit.permission({ admin: true });
        const onPerm = () => { state.admin = perm.allowed };
        perm.addEventListener("changed", onPerm);
        onPerm();
        document.getElementById("refresh").addEventListener("click", () => render(true));
        cockpit.addEventListener("locationchanged", () => render(false));
        render(true);
        window.setInterval(pollStatus, STATUS_POLL_MS);
    }

    document.addEventListener("DOMContentLoaded", init);
}());
