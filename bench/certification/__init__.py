"""The certification catalogue and the pytest session that runs it against a controller (``evbench certify``)."""
