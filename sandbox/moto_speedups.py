"""moto made cheaper per request, with the same answers: what moto server spends its time on
that AWS would not make anyone wait for.

Each patch here changes how much work moto does, never what it answers; a patch that makes moto
answer as AWS does belongs in ``sandbox.moto_server``. Measured on the test suite (py-spy over
``make test``): moto servers were half the suite's CPU, and the items below most of the part
that was not DynamoDB's own work. ``install`` applies them all; each one assumes the moto 5.2
internals it names, and ``sandbox.moto_server`` runs moto unpatched (correct, slower) where
they are missing.
"""
from __future__ import annotations


def install() -> None:
    install_cheap_transaction_snapshots()
    install_cheap_event_deliveries()
    install_cheap_message_receives()
    install_lazy_kms_keys()
    install_known_service_list()
    install_known_response_methods()
    install_plain_attribute_values()


def install_cheap_transaction_snapshots() -> None:
    """Make moto's TransactWriteItems snapshot only what a transaction can change.

    moto 5 deep-copies every table a transaction touches, to roll back if one of its conditions
    fails: O(table size) per transaction, which makes the sandbox slower with every approval it
    has seen (a burst of sends then exceeds the gateway's DynamoDB read timeout). A transaction
    only writes the items whose keys it names, so the snapshot here shares every other item
    and deep-copies only the item collections of the partition keys named. Only safe because
    ``sandbox.moto_server.SerializedApp`` runs one request at a time (the module's ``copy`` is
    swapped for the call).
    """
    import copy as copy_module
    from collections import defaultdict

    import moto.dynamodb.models as models
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    original = models.DynamoDBBackend.transact_write_items

    def snapshot(table: Table, partitions: set) -> Table:
        clone = copy_module.copy(table)
        clone.items = defaultdict(dict)
        for partition, content in table.items.items():
            clone.items[partition] = dict(content) if table.range_key_attr else content
        for partition in partitions:
            if partition in table.items:
                clone.items[partition] = copy_module.deepcopy(table.items[partition])
        return clone

    class CheapCopy:
        def __init__(self, partitions: dict[str, set]):
            self._partitions = partitions

        def __getattr__(self, name):
            return getattr(copy_module, name)

        def deepcopy(self, value, memo=None):
            if isinstance(value, Table):
                return snapshot(value, self._partitions.get(value.name, set()))
            return copy_module.deepcopy(value, memo)

    def transact_write_items(self, transact_items):
        partitions: dict[str, set] = {}
        for entry in transact_items:
            for operation in entry.values():
                table = self.tables.get(operation.get("TableName"))
                key = (operation.get("Item") or operation.get("Key") or {}) if table else {}
                if table is not None and table.hash_key_attr in key:
                    partitions.setdefault(table.name, set()).add(
                        DynamoType(key[table.hash_key_attr]))
        # moto applies a transaction's writes one by one, each streaming its record, and rolls
        # the tables back to their snapshots when one fails. DynamoDB never streams a cancelled
        # transaction, so the records it added go too; the shard object itself stays the same,
        # as the readers' shard iterators hold it.
        shards = {name: (table.stream_shard, len(table.stream_shard.items))
                  for name, table in self.tables.items()
                  if name in partitions and table.stream_shard is not None}
        models.copy = CheapCopy(partitions)
        try:
            return original(self, transact_items)
        except Exception:
            for name, (shard, length) in shards.items():
                del shard.items[length:]
                self.tables[name].stream_shard = shard
            raise
        finally:
            models.copy = copy_module

    models.DynamoDBBackend.transact_write_items = transact_write_items


def install_cheap_event_deliveries() -> None:
    """Make moto deliver an event to an SQS target in time independent of the queue's size.

    Each delivery reads the queue's attributes, which counts its messages, asking each message
    whether it is visible through a datetime round trip, and parses the rule target's input paths
    afresh (a JSONPath parser built per event): a queue nobody reads (the sandbox's internal app
    until someone runs the example consumer) made every event slower than the one before. The
    same answers, computed with the clock read as a float and each path parsed once."""
    import functools
    import time

    import jsonpath_ng.ext
    from moto.sqs.models import Message

    jsonpath_ng.ext.parse = functools.lru_cache(maxsize=256)(jsonpath_ng.ext.parse)
    Message.visible = property(lambda self: time.time() * 1000.0 > self.visible_at)
    Message.delayed = property(lambda self: time.time() * 1000.0 < self.delayed_until)


def message_within_retention(backend, queue_name: str, message) -> bool:
    """moto's ``SQSBackend.is_message_valid_based_on_retention_period``, without building the
    queue's attributes (``install_cheap_message_receives``)."""
    from moto.core.utils import unix_time

    retention_period = backend.get_queue(queue_name).message_retention_period
    return retention_period + message.sent_timestamp / 1000 > unix_time()


def install_cheap_message_receives() -> None:
    """Make an SQS receive cost the same however many messages its queue holds.

    For each message it hands out, moto checks the retention period by building every attribute
    of the queue twice, which counts the queue's messages each time: a receive from a queue of
    600 approval events (the sandbox's burst test) read 12,000 messages. The period is read
    directly (``message_within_retention``); the answer is the same."""
    from moto.sqs.models import SQSBackend

    SQSBackend.is_message_valid_based_on_retention_period = message_within_retention


def install_lazy_kms_keys() -> None:
    """Generate a KMS key's RSA key pair when it is first used, not when the key is made.

    moto makes a 2,048-bit RSA pair for every key, symmetric ones included, and DynamoDB makes a
    key (``alias/aws/dynamodb``) for the first encrypted table after each reset: a tenth of a
    second of moto's CPU for every test that starts from clean tables. Only Sign, Verify and
    GetPublicKey read the pair, and it is random either way."""
    import moto.kms.models as kms_models

    generate = kms_models.generate_private_key

    class LazyPrivateKey:
        def __init__(self, key_spec: str):
            self._key_spec = key_spec
            self._key = None

        def __getattr__(self, name):
            if name.startswith("_"):  # copy and pickle probe before __init__ has run
                raise AttributeError(name)
            if self._key is None:
                self._key = generate(self._key_spec)
            return getattr(self._key, name)

    kms_models.generate_private_key = LazyPrivateKey


def install_known_service_list() -> None:
    """List moto's service packages once instead of on every request.

    moto's dispatcher asks whether the request's host names a service by listing its package's
    directory and testing each entry with ``isdir``, for every request; the list cannot change
    while the server runs."""
    import functools

    import moto.backends as backends

    backends.list_of_moto_modules = functools.cache(
        lambda listing=backends.list_of_moto_modules: tuple(listing()))


def install_known_response_methods() -> None:
    """List each response class's methods once instead of on every request.

    moto looks the request's action up among its response class's methods with
    ``inspect.getmembers``, for every request: a twentieth of a small request's time. The
    classes are complete before the server answers its first request."""
    import functools

    import moto.core.responses as responses

    responses.method_names_from_class = functools.cache(
        lambda clazz, listing=responses.method_names_from_class: tuple(listing(clazz)))


# botocore's AttributeValue shape (DynamoDB's and DynamoDB Streams' alike): each member's kind.
_ATTRIBUTE_VALUE_KINDS = {"S": "string", "N": "string", "B": "blob", "SS": "strings",
                          "NS": "strings", "BS": "blobs", "M": "map", "L": "list",
                          "NULL": "boolean", "BOOL": "boolean"}


def plain_attribute_value(value, base64):
    """``value`` (a DynamoDB JSON attribute value, as moto holds it) as moto's serializer would
    write it, or None where it is not the plain shape this reads (then moto's own walk does).

    moto walks botocore's shape for each of the ten members of every attribute value, trying
    each member name's aliases against the value: most of a DynamoDB answer's cost, for values
    that come out as they went in (binary ones base64-encoded). The members come out in the
    shape's order, as moto writes them."""
    if type(value) is not dict or not value.keys() <= _ATTRIBUTE_VALUE_KINDS.keys():
        return None
    plain = {}
    for member, kind in _ATTRIBUTE_VALUE_KINDS.items():
        if member not in value:
            continue
        item = value[member]
        if item is None:
            continue
        if kind == "string":
            if type(item) is not str:
                return None
            plain[member] = item
        elif kind == "strings":
            if type(item) is not list or any(type(entry) is not str for entry in item):
                return None
            plain[member] = list(item)
        elif kind == "blob":
            if not isinstance(item, str | bytes):
                return None
            plain[member] = base64(item)
        elif kind == "blobs":
            if type(item) is not list or not all(isinstance(e, str | bytes) for e in item):
                return None
            plain[member] = [base64(entry) for entry in item]
        elif kind == "boolean":
            if type(item) is not bool:
                return None
            plain[member] = item
        elif kind == "map":
            if type(item) is not dict or not all(item):  # moto writes an "" key's value inline
                return None
            entries = {key: plain_attribute_value(entry, base64) for key, entry in item.items()}
            if any(entry is None for entry in entries.values()):
                return None
            plain[member] = entries
        else:
            if type(item) is not list:
                return None
            entries = [plain_attribute_value(entry, base64) for entry in item]
            if any(entry is None for entry in entries):
                return None
            plain[member] = entries
    return plain


def install_plain_attribute_values() -> None:
    """Write DynamoDB attribute values without moto's per-member walk of botocore's shape
    (``plain_attribute_value``); anything else, and any value it does not read, as before."""
    from moto.core.serialize import BaseJSONSerializer

    walk = BaseJSONSerializer._serialize_type_structure

    def serialize_structure(self, serialized, value, shape, key):
        if (key and shape.name == "AttributeValue"
                and shape.members.keys() == _ATTRIBUTE_VALUE_KINDS.keys()
                and not getattr(self._value_picker, "response_transformers", None)):
            plain = plain_attribute_value(value, self._base64)
            if plain is not None:
                self._default_serialize(serialized, plain, shape, key)
                return
        walk(self, serialized, value, shape, key)

    BaseJSONSerializer._serialize_type_structure = serialize_structure
