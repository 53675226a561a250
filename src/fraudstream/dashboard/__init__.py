"""The Streamlit dashboard: what the pipeline decides, read from PostgreSQL, and the analysts'
case queue.

`queries` holds the SQL, `database` the one shared connection, `charts` the Plotly figures,
`cases_page` the Cases page (through `adapters.cases`) and `app` the live page and the
navigation between the two (run by `streamlit run`, which `fraudstream dashboard` and
`fraudstream run` start as a child process with the pipeline's settings in its environment).
"""

from pathlib import Path

APP_PATH = Path(__file__).with_name("app.py")
"""The script `streamlit run` is given."""
