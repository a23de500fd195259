"""Simple plug-in, the seed article's baseline: every car draws what its charger allows, no limits.

It still runs behind the real OCPP server (stations boot, sessions are recorded, meter values
arrive) so the bench measures what a site without load management draws.
"""

from __future__ import annotations

from controllers.api import Controller


class Uncontrolled(Controller):
    name = "uncontrolled"
    meter_poll_s = 0.0  # a plug-in site has no meter to read
    meter_value_interval_s = 0.0  # and nobody asks the chargers for faster samples
