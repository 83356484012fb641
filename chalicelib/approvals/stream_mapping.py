"""How the approvals table's stream reaches the events function: its name and its event source
mapping. Its own module, with no imports, because app.py needs these constants when it is
imported (``@app.on_dynamodb_record``) while the outbox itself (``chalicelib.approvals.events``)
loads only in the function that publishes, keeping it off every other handler's cold start.
"""
from __future__ import annotations

# The Lambda function that publishes them, and how it reads the stream. TRIM_HORIZON: a stage's
# first deploy publishes what the stream already holds (its last 24 h), not only what comes
# after. The rest of the event source mapping (failure handling) is set by the merge template
# for `chalice package` and by `python -m ops deploy` for `chalice deploy`, from STREAM_MAPPING.
FUNCTION_NAME = "publish_approval_events"
STREAM_BATCH_SIZE = 100
STREAM_STARTING_POSITION = "TRIM_HORIZON"
STREAM_MAPPING = {
    "FunctionResponseTypes": ["ReportBatchItemFailures"],
    "BisectBatchOnFunctionError": True,
    # Then the batch's coordinates go to the dead-letter queue, and the shard moves on.
    "MaximumRetryAttempts": 8,
    # A record not published within an hour goes there too (the stream keeps records 24 h,
    # which leaves the replay command the rest of the day).
    "MaximumRecordAgeInSeconds": 3600,
}
