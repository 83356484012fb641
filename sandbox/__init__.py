"""The local sandbox: a Zeyi simulator with an approver's inbox page, and the scripts that run
the gateway against it on moto (``run``, ``stack``, ``gateway``, ``demo``, ``moto_server``).

Nothing here is deployed. ``zeyi`` (the simulator) and ``zeyi_protocol`` deliberately import
nothing from ``chalicelib``: they are an independent implementation of Zeyi's side of the protocol,
so a bug in the gateway's signing or encryption cannot hide behind the same bug in its test
partner.
"""
