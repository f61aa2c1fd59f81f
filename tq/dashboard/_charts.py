"""Small inline SVG charts: bars per bucket and an area line, with no scripts or assets."""

from __future__ import annotations

from collections.abc import Sequence

from tq.dashboard._html import Markup, attr, esc

W, H, PAD = 360, 90, 14


def _frame(title: str, inner: str, top: float, label: str) -> Markup:
    svg = (
        f'<svg role="img" aria-label="{attr(title)}" width="{W}" height="{H + PAD}" '
        f'viewBox="0 0 {W} {H + PAD}">{inner}'
        f'<line x1="0" y1="{H}" x2="{W}" y2="{H}" stroke="#c5cbd6"/>'
        f'<text x="2" y="10">{esc(_num(top))}</text>'
        f'<text x="2" y="{H + 11}">{esc(label)}</text>'
        f'<text x="{W - 2}" y="{H + 11}" text-anchor="end">now</text></svg>'
    )
    return Markup(f'<figure class="chart"><div class="t">{esc(title)}</div>{svg}</figure>')


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.1f}"


def bars(
    title: str, values: Sequence[float], marked: Sequence[float] = (), label: str = "1 h ago"
) -> Markup:
    """One bar per value (e.g. tasks finished per minute), `marked` drawn over in red."""
    top = max([*values, 1])
    step = W / max(len(values), 1)
    parts = []
    for i, v in enumerate(values):
        h = H * v / top
        x, w = f"{i * step:.1f}", f"{max(step - 1, 1):.1f}"
        parts.append(
            f'<rect x="{x}" y="{H - h:.1f}" width="{w}" height="{h:.1f}" '
            f'fill="#5b8def"><title>{_num(v)}</title></rect>'
        )
        m = marked[i] if i < len(marked) else 0
        if m:
            mh = H * m / top
            parts.append(
                f'<rect x="{x}" y="{H - mh:.1f}" width="{w}" height="{mh:.1f}" fill="#d64545"/>'
            )
    return _frame(title, "".join(parts), top, label)


def area(title: str, values: Sequence[float], label: str = "1 h ago") -> Markup:
    """A filled line through the values (e.g. queue depth at each minute's end)."""
    top = max([*values, 1])
    n = max(len(values) - 1, 1)
    pts = [(W * i / n, H - H * v / top) for i, v in enumerate(values)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    inner = (
        f'<polygon points="0,{H} {line} {W},{H}" fill="#dce7fb"/>'
        f'<polyline points="{line}" fill="none" stroke="#1b5fc4" stroke-width="1.5"/>'
    )
    return _frame(title, inner, top, label)
