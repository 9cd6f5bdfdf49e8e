"""The user's own domain XML text with only the changed elements rewritten.

`fix` edits an lxml tree; printing that tree would re-serialise the whole
file (double quotes for libvirt's single ones, the XML declaration and the
comments outside <domain> gone, multi-line tags joined), so a diff of it
would not apply to the user's file. Here the same operations are replayed
on a copy of the tree whose elements carry their index in document order,
the start and end of every element are found in the original text, and
only these spans are replaced:

- an element whose attributes changed: its start tag;
- a removed element: its lines (or its span, when it shares a line);
- a new element: inserted after its previous sibling, at that sibling's
  indentation, in the file's quote style;
- an element whose content changed otherwise: the whole element.

Everything else, bytes included, is the user's. If the result does not
parse to the same tree as the planned XML, the caller falls back to the
re-serialised XML (never a wrong text).
"""

from __future__ import annotations

import copy
import re

from lxml import etree

MARK = "{urn:x-vfio-advisor:textedit}i"

# Markup that is not an element: comments, processing instructions (the
# XML declaration too), CDATA, a DOCTYPE (with an internal subset).
_SKIP = re.compile(r"<!--.*?-->|<\?.*?\?>|<!\[CDATA\[.*?\]\]>|<!DOCTYPE(?:[^\[>]|\[.*?\])*>", re.S)
_START = re.compile(r"<([A-Za-z_][\w.\-:]*)((?:\s+[^\s=/>]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))*)\s*(/?)>")
_END = re.compile(r"</([A-Za-z_][\w.\-:]*)\s*>")


class Span:
    __slots__ = ("start", "start_end", "end", "empty")

    def __init__(self, start: int, start_end: int, empty: bool):
        self.start = start  # offset of '<'
        self.start_end = start_end  # just after the start tag's '>'
        self.end = start_end  # just after the end tag (set when it is found)
        self.empty = empty  # <tag/>


def element_spans(text: str) -> list[Span] | None:
    """The span of every element of `text`, in document order; None when
    the text is not what this scanner understands (the caller falls back)."""
    spans: list[Span] = []
    stack: list[tuple[str, Span]] = []
    pos = 0
    while True:
        lt = text.find("<", pos)
        if lt < 0:
            break
        m = _SKIP.match(text, lt)
        if m:
            pos = m.end()
            continue
        m = _END.match(text, lt)
        if m:
            if not stack or stack[-1][0] != m.group(1):
                return None
            stack.pop()[1].end = m.end()
            pos = m.end()
            continue
        m = _START.match(text, lt)
        if not m:
            return None
        span = Span(lt, m.end(), bool(m.group(3)))
        spans.append(span)
        if not span.empty:
            stack.append((m.group(1), span))
        pos = m.end()
    return None if stack else spans


def _quote_of(text: str) -> str:
    return "'" if text.count("='") >= text.count('="') else '"'


def _attr(value: str, q: str) -> str:
    value = (value.replace("&", "&amp;").replace("<", "&lt;").replace("\n", "&#10;")
             .replace("\t", "&#9;").replace("\r", "&#13;"))
    return value.replace(q, "&apos;" if q == "'" else "&quot;")


def _tag_name(el) -> str:
    q = etree.QName(el)
    if q.namespace and el.prefix:
        return f"{el.prefix}:{q.localname}"
    return q.localname


def _attr_name(el, key: str) -> str:
    if not key.startswith("{"):
        return key
    ns, local = key[1:].split("}", 1)
    if ns == "http://www.w3.org/XML/1998/namespace":
        return "xml:" + local
    prefix = next((p for p, uri in el.nsmap.items() if uri == ns and p), None)
    return f"{prefix}:{local}" if prefix else local


def _start_tag(el, q: str, close: bool) -> str:
    attrs = "".join(f" {_attr_name(el, k)}={q}{_attr(v, q)}{q}"
                    for k, v in el.attrib.items() if k != MARK)
    return f"<{_tag_name(el)}{attrs}{'/>' if close else '>'}"


def _serialize(el, q: str, indent: str, unit: str) -> str:
    """`el` as text in the file's style; its first line is not indented
    (it goes where the old element started)."""
    children = [c for c in el if isinstance(c.tag, str)]
    text = (el.text or "").strip()
    if not children and not text:
        return _start_tag(el, q, True)
    if not children:
        return _start_tag(el, q, False) + _text(text) + f"</{_tag_name(el)}>"
    inner = "".join("\n" + indent + unit + _serialize(c, q, indent + unit, unit) for c in children)
    return _start_tag(el, q, False) + inner + "\n" + indent + f"</{_tag_name(el)}>"


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _line_start(text: str, offset: int) -> int:
    return text.rfind("\n", 0, offset) + 1


def _indent_at(text: str, offset: int) -> str:
    start = _line_start(text, offset)
    head = text[start:offset]
    return head if not head.strip() else re.match(r"\s*", head).group(0)


def _unit(text: str) -> str:
    """The file's indentation step (two spaces, libvirt's, by default)."""
    steps = sorted({len(m.group(1)) for m in re.finditer(r"\n( +)<", text)})
    return " " * (steps[0] if steps and steps[0] <= 8 else 2)


def render(text: str, base_root, ops) -> str | None:
    """`text` with `ops` (xmledit.Op) applied as minimal edits; None when
    the text cannot be mapped onto the tree (the caller falls back)."""
    spans = element_spans(text)
    base_elements = [e for e in base_root.iter() if isinstance(e.tag, str)]
    if spans is None or len(spans) != len(base_elements):
        return None
    marked = copy.deepcopy(base_root)
    marked_elements = [e for e in marked.iter() if isinstance(e.tag, str)]
    for i, el in enumerate(marked_elements):
        el.set(MARK, str(i))
    for op in ops:
        op.apply(marked)
    q = _quote_of(text)
    unit = _unit(text)
    edits: list[tuple[int, int, str]] = []

    def whole(fixed, i: int) -> None:
        s = spans[i]
        edits.append((s.start, s.end, _serialize(fixed, q, _indent_at(text, s.start), unit)))

    def visit(fixed, i: int) -> None:
        base = base_elements[i]
        s = spans[i]
        fixed_children = [c for c in fixed if isinstance(c.tag, str)]
        base_children = [c for c in base if isinstance(c.tag, str)]
        if (fixed.text or "").strip() != (base.text or "").strip() or \
                _tag_name(fixed) != _tag_name(base) or (s.empty and fixed_children):
            whole(fixed, i)
            return
        if {k: v for k, v in fixed.attrib.items() if k != MARK} != dict(base.attrib):
            edits.append((s.start, s.start_end, _start_tag(fixed, q, s.empty)))
        index_of = {id(b): base_elements.index(b) for b in base_children}
        kept = {int(c.get(MARK)) for c in fixed_children if c.get(MARK) is not None}
        order = [int(c.get(MARK)) for c in fixed_children if c.get(MARK) is not None]
        if order != sorted(order):
            whole(fixed, i)
            return
        for b in base_children:
            j = index_of[id(b)]
            if j not in kept:
                edits.append(_removal(text, spans[j]))
        prev: int | None = None
        for c in fixed_children:
            mark = c.get(MARK)
            if mark is not None:
                prev = int(mark)
                visit(c, prev)
                continue
            if prev is not None:
                at = spans[prev].end
                indent = _indent_at(text, spans[prev].start)
            else:
                at = s.start_end
                indent = (_indent_at(text, spans[index_of[id(base_children[0])]].start)
                          if base_children else _indent_at(text, s.start) + unit)
            edits.append((at, at, "\n" + indent + _serialize(c, q, indent, unit)))

    visit(marked, 0)
    out = text
    # Back to front, so offsets stay valid; of two insertions at one place
    # the later one first, so they end up in document order.
    order = sorted(range(len(edits)), key=lambda k: (edits[k][0], edits[k][1], k), reverse=True)
    for k in order:
        start, end, new = edits[k]
        out = out[:start] + new + out[end:]
    return out


def _removal(text: str, span: Span) -> tuple[int, int, str]:
    """Delete an element; its whole lines when it has them to itself."""
    line_start = _line_start(text, span.start)
    line_end = text.find("\n", span.end)
    line_end = len(text) if line_end < 0 else line_end
    if not text[line_start:span.start].strip() and not text[span.end:line_end].strip():
        return line_start, min(line_end + 1, len(text)), ""
    return span.start, span.end, ""


def same_tree(a, b) -> bool:
    """Do two trees hold the same elements, attributes and non-blank text
    (whitespace between elements and comments aside)?"""
    def norm(el):
        return (el.tag, sorted((k, v) for k, v in el.attrib.items() if k != MARK),
                (el.text or "").strip(), [norm(c) for c in el if isinstance(c.tag, str)])
    return norm(a) == norm(b)
