"""Tables shared by every page (a module of its own so the task views need not import the
page module that lists them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import streamlit as st


def show_table(rows: Sequence[dict[str, Any]] | pd.DataFrame | Any, **kwargs: Any) -> None:
    """A read-only table (rows as dicts, a DataFrame or a pandas Styler)."""
    data = pd.DataFrame(list(rows)) if isinstance(rows, (list, tuple)) else rows
    st.dataframe(data, hide_index=True, **kwargs)
