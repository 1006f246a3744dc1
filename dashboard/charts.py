"""Altair chart builders shared by the pages (interactive: tooltips, zoom and pan)."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

# A categorical palette whose colours stay distinct on white (the default light blues do not).
SCHEME = "tableau10"


def eps_axis(norm: str) -> tuple[float, str]:
    """Scale and axis title for a budget: L-inf reads best in 1/255 steps (8, not 0.0314)."""
    if norm == "linf":
        return 255.0, "eps (L-inf, in 1/255)"
    return 1.0, f"eps ({norm}, pixel scale 0-1)" if norm else "eps"


def mixed_eps_title(norms: set[str]) -> str:
    if len(norms) == 1:
        return eps_axis(next(iter(norms)))[1]
    return "eps (L-inf in 1/255, other norms on the pixel scale 0-1)"


def curve_chart(rows: list[dict[str, Any]], *, x: str, y: str, color: str,
                x_title: str, y_title: str, lo: str | None = None, hi: str | None = None,
                dash: str | None = None, facet: str | None = None,
                tooltip: list[str] | None = None, y_domain: tuple[float, float] | None = (0, 1),
                height: int = 320) -> alt.Chart | alt.LayerChart | alt.FacetChart:
    """Lines with points per ``color`` group, an optional confidence band (``lo``..``hi``) and
    an optional dashed style for rows whose ``dash`` field is true (e.g. the worst case)."""
    df = pd.DataFrame(rows)
    scale = alt.Scale(domain=list(y_domain)) if y_domain else alt.Undefined
    base = alt.Chart(df).encode(x=alt.X(f"{x}:Q", title=x_title))
    colour = alt.Color(f"{color}:N", title=color, scale=alt.Scale(scheme=SCHEME))
    tips = [alt.Tooltip(t) for t in (tooltip or [color, x, y])]
    line_enc: dict[str, Any] = {"y": alt.Y(f"{y}:Q", title=y_title, scale=scale),
                                "color": colour, "tooltip": tips}
    if dash:
        line_enc["strokeDash"] = alt.StrokeDash(f"{dash}:N", title=dash)
    line = base.mark_line(point=True).encode(**line_enc)
    layers: list[Any] = []
    layers.append(line)  # first, so the shared legend takes the line's solid symbols
    if lo and hi and lo in df and hi in df:
        layers.append(base.mark_area(opacity=0.15).encode(
            y=alt.Y(f"{lo}:Q", scale=scale), y2=alt.Y2(f"{hi}:Q"), color=colour))
    chart: Any = alt.layer(*layers).properties(height=height)
    if facet and facet in df and df[facet].nunique() > 1:
        chart = chart.facet(column=alt.Column(f"{facet}:N", title=facet))
    return chart.interactive()


def bar_chart(rows: list[dict[str, Any]], *, x: str, y: str, color: str, x_title: str,
              y_title: str, column: str | None = None, tooltip: list[str] | None = None,
              y_domain: tuple[float, float] | None = (0, 1)) -> Any:
    df = pd.DataFrame(rows)
    scale = alt.Scale(domain=list(y_domain)) if y_domain else alt.Undefined
    chart: Any = alt.Chart(df).mark_bar().encode(
        x=alt.X(f"{x}:N", title=x_title),
        y=alt.Y(f"{y}:Q", title=y_title, scale=scale),
        color=alt.Color(f"{color}:N", title=color, scale=alt.Scale(scheme=SCHEME)),
        tooltip=[alt.Tooltip(t) for t in (tooltip or [x, color, y])],
    ).properties(height=300)
    if column and column in df and df[column].nunique() > 1:
        chart = chart.facet(column=alt.Column(f"{column}:N", title=column))
    return chart
