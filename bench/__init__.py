"""``make bench``: what the gateway's callback costs next to the least a correct handler can do.

Everything runs on loopback against ``bench.stand_in``, a zero-latency stand-in for DynamoDB,
Secrets Manager, Zeyi and the X-Ray daemon in a process of its own, so that what is timed is the
handler's own work: the gateway (``app.app``, as Lambda calls it, with tracing sampled) and
``bench.floor`` (window + md5 sign + token HMAC + JSON + one TransactWriteItems). Each is timed
in fresh worker processes (``bench.worker``), alternately, in several rounds; medians are
compared. The stand-in counts the AWS calls each operation makes.

Not part of ``make test`` (a timed test on a shared machine would be noise); tests/test_bench.py
runs a tiny configuration so the harness cannot rot, and checks the call counts, which are exact.
"""
