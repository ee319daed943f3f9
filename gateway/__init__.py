"""wagate's gateway process: the aiohttp app, REST API, auth and (later) realtime and bridges."""

__version__ = "0.1.0"
