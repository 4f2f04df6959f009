"""fedrec.wire.messages: every message read from the exchange is checked against its declared field types."""

from __future__ import annotations

import dataclasses
import json
import re
import traceback

import pytest

from fedrec.core.errors import PayloadError
from fedrec.wire.messages import (
    Admission,
    DecryptRequest,
    FitInstructions,
    FitReport,
    Hello,
    Left,
    MaskKeys,
    MaskSet,
    Message,
    MetricReport,
    Reveal,
    Stop,
    Unmask,
    Verdict,
    VetRequest,
    Vote,
)

KEY = "round-3/instructions/1.json"
HEX32 = "ab" * 32
SECRET = "c0ffee" * 16  # stands for a sealed share: never to appear in an error

#: one valid message of each class, every field set
SAMPLES: list[Message] = [
    Hello(silo_id="1", valid=True, n_rows=100, n_users=10, n_train=80, failures=["few rows"],
          identity={"name": "1", "sign": HEX32, "kx": HEX32}, data_version="v1"),
    Admission(silos=["1", "2"], excluded={"3": "invalid data"}, key_holder="1", he=True,
              roster={"1": {"name": "1", "sign": HEX32, "kx": HEX32}}, masking=False),
    FitInstructions(round=3, local_epochs=2, proximal_mu=0.1, silos=["1", "2"], evaluate=True, decryptor="1",
                    total_samples=160),
    MaskKeys(silo_id="1", round=3, public=HEX32, commitment=HEX32, threshold=2, shares={"2": SECRET}),
    MaskSet(round=3, silos=["1", "2"]),
    Unmask(round=3, survivors=["1", "2"], dropped=["3"]),
    Reveal(silo_id="1", round=3, self_shares={"2": [1, SECRET]}, key_shares={"3": [1, SECRET]}),
    DecryptRequest(round=3, attempt=0, decryptor="1"),
    Verdict(round=3, attempt=1, decryptor="2", reason="not the sum", culprits={"3": "not a valid encoding"}),
    VetRequest(round=3, candidates=4),
    Vote(silo_id="2", round=3, val=[{"n": 10, "hr": 6.0}, {"n": 10, "hr": 7.0}], auc=[8.1, 8.4]),
    FitReport(silo_id="1", round=3, n_samples=80, loss=0.5, seconds_train=1.5, seconds_encrypt=0.25, bytes_sent=4096,
              plaintext_bytes=1024),
    MetricReport(silo_id="1", round=3, val={"n": 10, "hr": 0.5, "ndcg": 0.25}, test={"n": 10, "hr": 0.4},
                 seconds=2.0, cold={"n": 3, "hr": 1.0}),
    Stop(reason="finished", last_round=3),
    Left(silo_id="1", after_round=2, reason="PayloadError: NaN in update"),
]
BY_CLASS = {type(m): m for m in SAMPLES}


def _wrong(value: object) -> object:
    """A JSON value of another type than ``value``'s."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return {"x": value}
    if isinstance(value, dict):
        return list(value)
    return [value]


def _posted(message: Message, **fields: object) -> bytes:
    """``message`` as JSON, with ``fields`` set to raw JSON values (whatever their type)."""
    return json.dumps(json.loads(message.to_json()) | fields).encode()


def test_every_message_class_has_a_sample():
    # Prepare
    classes = set(Message.__subclasses__())

    # Act
    missing = classes - set(BY_CLASS)

    # Assert
    assert not missing, f"add a sample of {sorted(c.__name__ for c in missing)}"


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_a_valid_message_round_trips(message):
    # Prepare
    data = message.to_json()

    # Act
    back = type(message).from_json(data, KEY)

    # Assert
    assert back == message
    assert back.to_json() == data
    assert all(type(getattr(back, f.name)) is type(getattr(message, f.name)) for f in dataclasses.fields(message))


@pytest.mark.parametrize("cls, name", [(type(m), f.name) for m in SAMPLES for f in dataclasses.fields(m)],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_any_field_of_the_wrong_type_is_refused_naming_it(cls, name):
    # Prepare
    sample = BY_CLASS[cls]
    data = _posted(sample, **{name: _wrong(getattr(sample, name))})

    # Act / Assert
    with pytest.raises(PayloadError, match=rf"^{re.escape(KEY)}: field '{name}' must be .*, got "):
        cls.from_json(data, KEY)


@pytest.mark.parametrize("cls, fields, error", [
    # an integer as a string, a float or a boolean
    (FitInstructions, {"round": "3"}, "field 'round' must be an integer, got str"),
    (FitReport, {"n_samples": -5.5}, "field 'n_samples' must be an integer, got float"),
    (DecryptRequest, {"attempt": True}, "field 'attempt' must be an integer, got bool"),
    (Stop, {"last_round": False}, "field 'last_round' must be an integer, got bool"),
    (MaskKeys, {"threshold": 2.0}, "field 'threshold' must be an integer, got float"),
    # a number as a string or a boolean (an integer is a number)
    (FitReport, {"loss": "0.5"}, "field 'loss' must be a number, got str"),
    (FitInstructions, {"proximal_mu": True}, "field 'proximal_mu' must be a number, got bool"),
    # a string as a number or null; a boolean as an integer
    (Left, {"silo_id": 1}, "field 'silo_id' must be a string, got int"),
    (Verdict, {"reason": None}, "field 'reason' must be a string, got null"),
    (Admission, {"he": 1}, "field 'he' must be a boolean, got int"),
    # a string or an object where a list is wanted, a list where an object is wanted
    (Admission, {"silos": "abc"}, "field 'silos' must be a list, got str"),
    (MaskSet, {"silos": {"1": "2"}}, "field 'silos' must be a list, got dict"),
    (Admission, {"excluded": ["3"]}, "field 'excluded' must be an object, got list"),
    (MetricReport, {"val": [10, 0.5]}, "field 'val' must be an object, got list"),
    (MetricReport, {"cold": [1]}, "field 'cold' must be an object, got list"),
    # wrong nested types: named down to the item
    (Hello, {"failures": ["few rows", 3]}, "field 'failures[1]' must be a string, got int"),
    (Hello, {"identity": {"name": "1", "sign": ["ab"]}}, "field 'identity[sign]' must be a string, got list"),
    (Admission, {"roster": {"1": {"sign": 5}}}, "field 'roster[1][sign]' must be a string, got int"),
    (Admission, {"roster": {"1": ["sign"]}}, "field 'roster[1]' must be an object, got list"),
    (Unmask, {"dropped": [None]}, "field 'dropped[0]' must be a string, got null"),
    (Verdict, {"culprits": {"3": False}}, "field 'culprits[3]' must be a string, got bool"),
    (MetricReport, {"test": {"n": "10"}}, "field 'test[n]' must be a number, got str"),
    (MetricReport, {"val": {"n": True}}, "field 'val[n]' must be a number, got bool"),
    (Reveal, {"self_shares": {"2": [1.5, "ab"]}}, "field 'self_shares[2][0]' must be an integer or a string, got float"),
])
def test_a_wrong_type_is_refused_naming_the_source_and_the_field(cls, fields, error):
    # Prepare
    data = _posted(BY_CLASS[cls], **fields)

    # Act / Assert
    with pytest.raises(PayloadError, match=f"^{re.escape(f'{KEY}: {error}')}$"):
        cls.from_json(data, KEY)


@pytest.mark.parametrize("cls, fields", [
    (MaskKeys, {"shares": {"2": [SECRET]}}),
    (MaskKeys, {"public": [SECRET]}),
    (Reveal, {"self_shares": {"2": SECRET}}),
    (Reveal, {"key_shares": {"3": [[SECRET], 1]}}),
    (Reveal, {"key_shares": {"3": {"point": 1, "value": SECRET}}}),
])
def test_a_refused_secret_is_never_echoed(cls, fields):
    # Prepare
    data = _posted(BY_CLASS[cls], **fields)

    # Act
    with pytest.raises(PayloadError) as info:
        cls.from_json(data, KEY)

    # Assert
    assert "field '" in str(info.value)
    assert SECRET not in "".join(traceback.format_exception(info.value))


def test_unknown_fields_are_ignored():
    # Prepare
    sample = BY_CLASS[Stop]

    # Act
    back = Stop.from_json(_posted(sample, extra="anything", more=[1, {"x": None}]), KEY)

    # Assert
    assert back == sample


def test_an_integer_is_a_number_and_defaults_fill_absent_fields():
    # Prepare
    data = b'{"silo_id": "1", "round": 3, "n_samples": 8, "loss": 1, "seconds_train": 0, "seconds_encrypt": 0, ' \
           b'"bytes_sent": 10, "plaintext_bytes": 4}'
    minimal = b'{"round": 2, "local_epochs": 1}'

    # Act
    report = FitReport.from_json(data, KEY)
    ins = FitInstructions.from_json(minimal, KEY)

    # Assert
    assert report.loss == 1.0 and type(report.loss) is float
    assert ins == FitInstructions(round=2, local_epochs=1)


def test_missing_fields_and_bad_json_keep_their_errors():
    # Prepare
    cases = [(b'{"round": 3}', f"{KEY}: FitInstructions lacks ['local_epochs']"),
             (b"not json", f"{KEY}: not JSON"), (b"[1]", f"{KEY}: expected a JSON object")]

    # Act / Assert
    for data, error in cases:
        with pytest.raises(PayloadError, match=f"^{re.escape(error)}"):
            FitInstructions.from_json(data, KEY)


def test_a_well_typed_message_still_meets_its_checks():
    # Prepare
    data = _posted(BY_CLASS[Unmask], survivors=["1", "2"], dropped=["2"])

    # Act / Assert
    with pytest.raises(PayloadError, match="both survived and dropped"):
        Unmask.from_json(data, KEY)


@pytest.mark.parametrize("fields", [{"group": -1}, {"base_round": 3}, {"base_round": -2}, {"base_round": 7}])
def test_instructions_naming_no_group_or_a_base_round_not_before_the_round_are_refused(fields):
    """federation.groups / guard_drop: a coordinator may not send a negative group, nor a round that trains from a
    model of its own round or later (or a negative one other than -1: the previous round)."""
    data = _posted(BY_CLASS[FitInstructions], round=3, **fields)

    with pytest.raises(PayloadError, match="out of range"):
        FitInstructions.from_json(data, KEY)
    assert FitInstructions.from_json(_posted(BY_CLASS[FitInstructions], round=3, group=2, base_round=1), KEY).group == 2


def test_a_parsed_message_is_frozen_and_replaceable():
    # Prepare
    ins = FitInstructions.from_json(BY_CLASS[FitInstructions].to_json(), KEY)

    # Act
    later = dataclasses.replace(ins, round=4, silos=["1"])

    # Assert
    assert (later.round, later.silos, later.local_epochs) == (4, ["1"], ins.local_epochs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ins.round = 5


@pytest.mark.parametrize("fields", [{"seconds_train": -1.0}, {"cpu_train": -0.5}, {"bytes_sent": -1},
                                    {"seconds_encrypt": 1e400}, {"loss": float("nan")}],
                         ids=["negative seconds", "negative CPU", "negative bytes", "infinite", "NaN loss"])
def test_a_fit_report_with_impossible_bookkeeping_is_refused_by_name(fields):
    # Prepare: a silo's report whose figures reach the round's record, MLflow and the round's table
    data = _posted(BY_CLASS[FitReport], **fields)

    # Act / Assert: named (by the JSON reader for what JSON cannot hold, else as implausible bookkeeping)
    with pytest.raises(PayloadError, match=rf"^{re.escape(KEY)}: "):
        FitReport.from_json(data, KEY)
    assert FitReport.from_json(_posted(BY_CLASS[FitReport]), KEY) == BY_CLASS[FitReport]  # control: the sample passes
