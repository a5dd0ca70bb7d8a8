"""The search as a service (``mcaas-search serve``): an HTTP API and a web page.

- ``app``: the FastAPI application, its routes and static files;
- ``auth``: the bearer token;
- ``config``: what a server is started with, and its folder;
- ``uploads``: uploaded teacher models, checked before they are kept;
- ``jobs``: jobs on disk and the scheduler that starts their workers;
- ``worker``: the process that runs one job (``run_study``, as the CLI does);
- ``studies``: what the API says about studies, and the files it serves for them;
- ``events``: live progress as Server-Sent Events;
- ``static/``: the page (plain HTML and JavaScript; plotly.js comes from the plotly package).
"""

from search.service.app import create_app
from search.service.auth import load_or_create_token
from search.service.config import ServerConfig, data_roots

__all__ = ["ServerConfig", "create_app", "data_roots", "load_or_create_token"]
