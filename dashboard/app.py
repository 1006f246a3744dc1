"""The script Streamlit runs: ``arange dashboard`` starts ``streamlit run`` on this file.

The runs folder comes from the ``ARANGE_DASHBOARD_RUNS`` environment variable (default
``runs``). Everything else lives in :mod:`arange.dashboard.views`.
"""

from __future__ import annotations

import streamlit as st

from arange.dashboard.views import main

st.set_page_config(page_title="arange dashboard", layout="wide")
main()
