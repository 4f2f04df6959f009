"""fedrec.cli: the Typer app as a user runs it."""

from __future__ import annotations

import json

import pytest

from typer.testing import CliRunner

from fedrec.cli import app


def test_centralized_pop_json(params_file, tmp_path):
    # Prepare
    runner = CliRunner()
    out_file = tmp_path / "results" / "pop.json"

    # Execute
    result = runner.invoke(app, ["centralized", "--model", "pop", "--json", "--params", str(params_file),
                                 "--out", str(out_file)])

    # Assert: exactly one JSON object on stdout, progress elsewhere
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    payload = json.loads(lines[0])
    assert payload["model"] == "pop"
    for key in ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10"):
        assert 0.0 <= payload[key] <= 1.0
    assert payload["ndcg@10"] <= payload["hr@10"]
    assert payload["silos"] == ["0", "1", "2"]
    assert json.loads(out_file.read_text()) == payload
    # the data steps ran into the configured work_dir
    assert (tmp_path / "data" / "split" / "0" / "holdout.parquet").exists()


def test_bad_config_key_exits_2_naming_the_key(params_file):
    result = CliRunner().invoke(app, ["centralized", "--model", "pop", "--params", str(params_file),
                                      "-S", "model.nme=1"])

    assert result.exit_code == 2
    assert "model.nme" in result.stderr
    assert "unknown config key" in result.stderr
    assert result.stdout.strip() == ""


def test_bad_model_option_exits_2():
    result = CliRunner().invoke(app, ["centralized", "--model", "bert"])

    assert result.exit_code == 2
    assert "--model must be pop, gmf, neumf or hybrid, not 'bert'" in result.stderr


def test_run_rejects_bad_config_before_starting_prefect(params_file):
    result = CliRunner().invoke(app, ["run", "--params", str(params_file), "-S", "federation.rounds=zero"])

    assert result.exit_code == 2
    assert "federation.rounds" in result.stderr


def test_run_emits_one_json_object(prefect_harness, params_file):
    # Execute: one round through the real flow, one silo at a time
    result = CliRunner().invoke(app, ["run", "--params", str(params_file), "--rounds", "1", "--json",
                                      "-S", "federation.max_parallel_silos=1"])  # one host process for all silos

    # Assert
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    summary = json.loads(lines[0])
    for key in ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["rounds"] == 1 and summary["he"] is True
    assert summary["seconds_per_round"] > 0 and summary["seconds_per_round_median"] > 0
    assert set(summary["bytes_per_round"]) == {"0", "1", "2"} and summary["bytes_per_round_mean"] > 0


def test_malformed_override_exits_2_with_a_message(params_file):
    result = CliRunner().invoke(app, ["partition", "--params", str(params_file), "-S", "federation.rounds"])

    assert result.exit_code == 2
    assert "not key=value" in result.output


def test_identities_become_a_pinned_roster_and_keys_of_finished_runs_can_be_forgotten(params_file, tmp_path):
    from fedrec.trust import Roster

    runner = CliRunner()
    files = []
    for party in ("coordinator", "0", "1", "2"):
        args = ["identity"] if party == "coordinator" else ["silo", "identity", "--silo", party]
        result = runner.invoke(app, [*args, "--params", str(params_file)])
        assert result.exit_code == 0, result.output
        files.append(tmp_path / f"{party}.pub.json")
        files[-1].write_text(result.stdout)
    again = runner.invoke(app, ["silo", "identity", "--silo", "0", "--params", str(params_file)])

    made = runner.invoke(app, ["roster", *map(str, files), "--out", str(tmp_path / "roster.json")])
    missing = runner.invoke(app, ["roster", *map(str, files[1:]), "--out", str(tmp_path / "bad.json")])

    # Assert: one key pair per party, made once; the roster holds their public keys only
    assert made.exit_code == 0, made.output
    roster = Roster.load(tmp_path / "roster.json")
    assert set(roster.parties) == {"coordinator", "0", "1", "2"}
    assert again.stdout == files[1].read_text()
    assert missing.exit_code == 2 and "needs the coordinator's identity" in missing.output
    private = (tmp_path / "state" / "silos" / "0" / "identity" / "identity.key").read_bytes()
    assert private.hex() not in (tmp_path / "roster.json").read_text()

    # Execute: a finished run's HE keys at silo 0 are deleted on request
    keys = tmp_path / "state" / "silos" / "0" / "run-x" / "keys"
    keys.mkdir(parents=True)
    (keys / "secret.ctx").write_bytes(b"key material")
    forgot = runner.invoke(app, ["silo", "forget-keys", "--silo", "0", "--all", "--params", str(params_file)])
    assert forgot.exit_code == 0, forgot.output
    assert not keys.exists() and (tmp_path / "state" / "silos" / "0" / "identity" / "identity.key").exists()


def test_a_cut_off_other_than_10_is_reported_as_such(params_file):
    result = CliRunner().invoke(app, ["centralized", "--model", "pop", "--json", "--params", str(params_file),
                                      "-S", "evaluation.k=5"])

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.splitlines()[-1])
    assert {"hr@5", "ndcg@5", "full_hr@5", "full_ndcg@5"} <= set(payload) and "hr@10" not in payload
    assert payload["selection_metric"] == "val_hr@5"
    table = CliRunner().invoke(app, ["centralized", "--model", "pop", "--params", str(params_file),
                                     "-S", "evaluation.k=5"])
    assert table.exit_code == 0 and "hr@5" in table.stdout and "hr@10" not in table.stdout


#: commands given a path-like silo or run id (issue #17, item 6); "\n": a trailing newline passed the old pattern
PATH_LIKE_IDS = {
    "run --run-id ../../../x": ["run", "--run-id", "../../../x"],
    "run --run-id 'r1\\n'": ["run", "--run-id", "r1\n"],
    "coordinate --silos 0,../x": ["coordinate", "--silos", "0,../x"],
    "coordinate --run-id ../x": ["coordinate", "--silos", "0,1,2", "--run-id", "../x"],
    "silo forget-keys --run-id ../../../victim": ["silo", "forget-keys", "--silo", "0", "--run-id", "../../../victim"],
    "silo forget-keys --silo '0\\n'": ["silo", "forget-keys", "--silo", "0\n", "--all"],
    "silo serve --silo ../x": ["silo", "serve", "--silo", "../x"],
    "silo identity --silo '0\\n'": ["silo", "identity", "--silo", "0\n"],
    "recommend --run-id ../x": ["recommend", "--silo", "0", "--user", "1", "--run-id", "../x"],
    "recommend --silo '0\\n'": ["recommend", "--silo", "0\n", "--user", "1"],
    "serve --run-id ../../x": ["serve", "--silo", "0", "--run-id", "../../x"],
    "feedback --silo ../x": ["feedback", "FEEDBACK_CSV", "--silo", "../x"],
    "snapshot of silo ../x": ["snapshot", "-S", "silo.source=sqlite:///db/{silo}.sqlite", "-S", "federation.silos=[../x]"],
}


@pytest.mark.parametrize("case", list(PATH_LIKE_IDS))
def test_path_like_ids_exit_2_before_any_path_is_built(params_file, tmp_path, case):
    # Prepare: silo 0's state, and a run's key material outside the state tree, where a "../" run id of silo 0 leads
    (tmp_path / "state" / "silos" / "0").mkdir(parents=True)
    victim = tmp_path / "victim" / "keys"
    victim.mkdir(parents=True)
    (victim / "secret.ctx").write_bytes(b"key material")
    csv = tmp_path / "feedback.csv"
    csv.write_text("user_id,item_id,rating\n1,1,4\n")
    before = sorted(tmp_path.parent.rglob("*"))  # whatever "../" could reach from here
    args = [str(csv) if a == "FEEDBACK_CSV" else a for a in PATH_LIKE_IDS[case]]

    # Execute
    result = CliRunner().invoke(app, [*args, "--params", str(params_file)])

    # Assert: the named error (exit 2, one line), nothing written or deleted anywhere
    assert result.exit_code == 2, result.output
    assert " id " in result.output and "is not allowed" in result.output and "Traceback" not in result.output
    assert sorted(tmp_path.parent.rglob("*")) == before
    assert (victim / "secret.ctx").read_bytes() == b"key material"
