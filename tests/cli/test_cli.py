"""fedrec.cli.app: the Typer app as a user runs it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedrec.cli.app import app
from fedrec.core.errors import ConfigError


@pytest.mark.slow
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


@pytest.mark.slow
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
    from fedrec.wire.trust import Roster

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


@pytest.mark.slow
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


# --- loud configuration (issue #24, items 2, 3 and 7) -------------------------------------------------------------


@pytest.mark.slow
def test_a_set_data_directory_that_does_not_exist_is_an_error_even_with_prepared_data(params_file, tmp_path,
                                                                                     monkeypatch):
    # Prepare: MovieLens as the source, its prepared data already in data/ (the user's stale copy)
    import yaml

    raw = yaml.safe_load(params_file.read_text())
    runner = CliRunner()
    assert runner.invoke(app, ["centralized", "--model", "pop", "--params", str(params_file)]).exit_code == 0
    raw["data"]["source"] = "movielens"
    params_file.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("FEDREC_DATA_DIR", str(tmp_path / "no" / "such" / "dir"))

    # Execute
    result = runner.invoke(app, ["centralized", "--model", "pop", "--params", str(params_file)])

    # Assert: exit 2 naming the setting, before any training on what data/ holds
    assert result.exit_code == 2, result.output
    assert "FEDREC_DATA_DIR" in result.stderr and "no such directory" in result.stderr
    assert "Traceback" not in result.output


def test_a_data_directory_without_movielens_files_is_named(params_file, tmp_path, monkeypatch):
    import yaml

    raw = yaml.safe_load(params_file.read_text())
    raw["data"]["source"] = "movielens"
    params_file.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("FEDREC_DATA_DIR", str(tmp_path))  # exists, holds no u.data

    result = CliRunner().invoke(app, ["prepare", "--params", str(params_file)])

    assert result.exit_code == 2
    assert "lacks" in result.stderr and "u.data" in result.stderr


def test_a_cron_starting_with_a_star_reaches_the_cron_check_and_is_shown_as_given(params_file):
    runner = CliRunner()

    # the cron goes through (before: yaml ScannerError traceback); the bad time zone is what stops the command
    deploy = runner.invoke(app, ["deploy", "--cron", "*/30 * * * *", "--params", str(params_file),
                                 "-S", "operations.timezone=Nowhere/Nocity"])
    shown = runner.invoke(app, ["config", "--json", "--params", str(params_file),
                                "-S", "operations.schedule=*/30 * * * *"])

    assert deploy.exit_code == 2, deploy.output
    assert "Traceback" not in deploy.output and "ScannerError" not in deploy.output
    assert "Nowhere/Nocity" in deploy.stderr
    assert json.loads(shown.stdout)["operations.schedule"] == {"value": "*/30 * * * *", "source": "-S"}


def test_every_command_that_reads_params_takes_set_overrides():
    import typer.main

    group = typer.main.get_command(app)
    commands = {name: cmd for name, cmd in group.commands.items()}
    commands |= {f"silo {name}": cmd for name, cmd in group.commands["silo"].commands.items()}

    readers = {name: {o for p in cmd.params for o in p.opts} for name, cmd in commands.items()
               if any("--params" in p.opts for p in cmd.params)}

    assert {"run", "prepare", "silo serve", "deploy", "serve", "config"} <= set(readers)
    assert not [name for name, opts in readers.items() if "-S" not in opts]


def test_config_shows_sources_and_the_schema_and_an_unknown_key_gets_a_suggestion(params_file):
    runner = CliRunner()

    values = runner.invoke(app, ["config", "--json", "--params", str(params_file), "-S", "federation.rounds=3"])
    schema = runner.invoke(app, ["config", "--schema"])
    typo = runner.invoke(app, ["config", "--params", str(params_file), "-S", "federation.round=3"])

    assert values.exit_code == 0, values.output
    rows = json.loads(values.stdout)
    assert rows["federation.rounds"] == {"value": 3, "source": "-S"}
    assert rows["data.source"]["source"] == str(params_file)
    assert schema.exit_code == 0 and "federation.rounds  (int; default 40)" in schema.stdout
    assert typo.exit_code == 2 and "did you mean 'federation.rounds'?" in typo.stderr


def test_no_params_file_warns_and_a_missing_explicit_one_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty directory
    runner = CliRunner()

    defaults = runner.invoke(app, ["config", "--json"])
    missing = runner.invoke(app, ["prepare", "--params", "nowhere.yaml"])

    assert defaults.exit_code == 0 and "no params.yaml" in defaults.stderr and "built-in defaults" in defaults.stderr
    assert json.loads(defaults.stdout)["federation.rounds"] == {"value": 40, "source": "default"}
    assert missing.exit_code == 2 and "--params nowhere.yaml: no such file" in missing.stderr


def test_a_served_silo_refuses_a_run_that_changes_its_pinned_params(monkeypatch):
    from fedrec.flows.silo_agent import SERVING_ENV, check_pinned, pin_serving

    monkeypatch.setenv(SERVING_ENV, "{}")
    monkeypatch.delenv(SERVING_ENV)  # and unset again after the test (pin_serving sets it in os.environ)
    check_pinned("0", "/anything.yaml", {"federation.masking": "false"})  # not served: a host process, as given
    pinned = pin_serving("0", "/silo/params.yaml", {"federation.min_silos": "4"})

    check_pinned(**pinned)  # the deployment's own parameters pass
    for changed in ({"silo_id": "1"}, {"params_path": "/tmp/other.yaml"},
                    {"overrides": {"federation.min_silos": "4", "federation.masking": "false"}}):
        with pytest.raises(ConfigError, match="refused"):
            check_pinned(**(pinned | changed))



def _movielens_with_stale_data(params_file) -> None:
    """params_file's synthetic data prepared and partitioned into its data/, then the source switched to MovieLens:
    what a user who points FEDREC_DATA_DIR elsewhere has in data/."""
    import yaml

    runner = CliRunner()
    for step in ("prepare", "partition"):
        assert runner.invoke(app, [step, "--params", str(params_file)]).exit_code == 0
    raw = yaml.safe_load(params_file.read_text())
    raw["data"]["source"] = "movielens"
    params_file.write_text(yaml.safe_dump(raw))


@pytest.mark.parametrize("command", [["run"], ["prepare"], ["partition"], ["validate"], ["split"],
                                     ["centralized", "--model", "pop"], ["embed-items"], ["snapshot"]])
def test_every_data_command_refuses_a_data_directory_that_does_not_exist(params_file, tmp_path, monkeypatch,
                                                                         command):
    # Prepare: stale prepared data in data/, FEDREC_DATA_DIR set to a typo (issue: `fedrec run` exited 0 on data/)
    _movielens_with_stale_data(params_file)
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*"))
    monkeypatch.setenv("FEDREC_DATA_DIR", "/no/such/dir")

    # Execute
    result = CliRunner().invoke(app, [*command, "--params", str(params_file)])

    # Assert: exit 2, the setting named, nothing in data/ touched
    assert result.exit_code == 2, result.output
    assert "env FEDREC_DATA_DIR=/no/such/dir: no such directory" in result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*")) == before


def test_a_data_raw_dir_override_that_does_not_exist_is_named_as_such(params_file, tmp_path, monkeypatch):
    _movielens_with_stale_data(params_file)
    monkeypatch.delenv("FEDREC_DATA_DIR", raising=False)

    result = CliRunner().invoke(app, ["run", "--params", str(params_file), "-S", f"data.raw_dir={tmp_path}/nope"])

    assert result.exit_code == 2, result.output
    assert f"data.raw_dir={tmp_path}/nope: no such directory" in result.stderr


def test_prepare_in_an_empty_directory_warns_of_the_defaults_and_fails_offline_with_the_way_out(tmp_path,
                                                                                                monkeypatch):
    # Prepare: no params.yaml, no FEDREC_DATA_DIR, no network
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDREC_DATA_DIR", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", offline)

    # Execute
    result = CliRunner().invoke(app, ["prepare"])

    # Assert: the defaults are named, the download failure says what to set; nothing prepared
    assert result.exit_code == 2, result.output
    assert "warning: no params.yaml" in result.stderr and "built-in defaults" in result.stderr
    assert "could not download" in result.stderr and "Set FEDREC_DATA_DIR" in result.stderr
    assert not (tmp_path / "data" / "prepared").exists()


@pytest.mark.parametrize("how", ["--cron", "-S"])
def test_deploy_registers_a_cron_starting_with_a_star_as_given(params_file, monkeypatch, how):
    # Prepare: the Prefect side replaced by a recorder (tests/orchestration/test_operations.py registers against a server)
    import contextlib

    from fedrec.orchestration import launch
    from fedrec.orchestration.ops import deploy as dep

    registered = {}

    def register(**kwargs):
        registered.update(kwargs)
        return dep.Deployed(id="1", name="scheduled_retraining/x", work_pool=kwargs["work_pool"], pool_created=False,
                            cron=kwargs["cron"], timezone=kwargs["timezone"], parameters={}, working_directory=".")

    monkeypatch.setattr(dep, "register", register)
    monkeypatch.setattr(launch, "prefect_api", lambda: contextlib.nullcontext("http://127.0.0.1:1/api"))
    option = ["--cron", "*/30 * * * *"] if how == "--cron" else ["-S", "operations.schedule=*/30 * * * *"]

    # Execute
    result = CliRunner().invoke(app, ["deploy", "--params", str(params_file), *option])

    # Assert: no YAML ScannerError; Prefect's cron check passes; the cron reaches the deployment unchanged
    assert result.exit_code == 0, result.output
    assert registered["cron"] == "*/30 * * * *" and registered["timezone"] == "UTC"
    assert "on cron */30 * * * *" in result.stderr


def test_silo_serve_pins_its_own_overrides_on_the_silos_side(params_file, tiny_cfg, monkeypatch):
    # Prepare: the silo's data in place (serve checks it first), prefect.serve replaced by a recorder of the
    # deployment it would serve
    import prefect

    from fedrec.silo import data as pipeline

    pipeline.ensure_partitioned(tiny_cfg)

    from fedrec.flows.silo_agent import SERVING_ENV, check_pinned

    served = []
    monkeypatch.setenv(SERVING_ENV, "{}")
    monkeypatch.delenv(SERVING_ENV)  # unset again after the test
    monkeypatch.setenv("PREFECT_RUNNER_POLL_FREQUENCY", "2")
    monkeypatch.setattr(prefect, "serve", lambda *deployments, **kwargs: served.extend(deployments))

    # Execute
    result = CliRunner().invoke(app, ["silo", "serve", "--silo", "0", "--params", str(params_file),
                                      "-S", "federation.min_silos=4", "-S", "federation.masking=true"])
    typo = CliRunner().invoke(app, ["silo", "serve", "--silo", "0", "--params", str(params_file),
                                    "-S", "federation.min_silo=4"])

    # Assert: the runs load the operator's params and overrides; a coordinator asking for others is refused
    assert result.exit_code == 0, result.output
    (deployment,) = served
    pinned = {"silo_id": "0", "params_path": str(params_file.resolve()),
              "overrides": {"federation.min_silos": "4", "federation.masking": "true"}}
    assert deployment.name == "silo-0" and deployment.parameters == pinned
    check_pinned(**pinned)
    with pytest.raises(ConfigError, match="refused"):
        check_pinned(**(pinned | {"overrides": {"federation.masking": "false"}}))
    assert typo.exit_code == 2 and "did you mean 'federation.min_silos'?" in typo.stderr


def test_help_says_where_the_keys_are_listed():
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)

    assert result.exit_code == 0
    assert "-S key=value" in result.stdout and "fedrec config --schema" in result.stdout


@pytest.mark.slow
def test_the_issues_commands_in_a_copy_of_the_project_directory_as_a_user_types_them(tmp_path):
    # Prepare: the project's params.yaml in a fresh directory, a shell's environment
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    shutil.copy(Path(__file__).resolve().parents[2] / "params.yaml", tmp_path / "params.yaml")
    env = {k: v for k, v in os.environ.items() if k != "FEDREC_DATA_DIR"}

    def fedrec(*args, **extra_env):
        return subprocess.run([sys.executable, "-m", "fedrec", *args], cwd=tmp_path, env=env | extra_env,
                              capture_output=True, text=True, timeout=300)

    # Execute
    run = fedrec("run", FEDREC_DATA_DIR="/no/such/dir")
    cron = fedrec("config", "--json", "-S", "operations.schedule=*/30 * * * *")
    typo = fedrec("run", "-S", "federation.round=5")

    # Assert: exit 2 with one line naming what is wrong (before: 0, and a ScannerError traceback)
    assert run.returncode == 2 and "FEDREC_DATA_DIR=/no/such/dir: no such directory" in run.stderr, run.stderr
    assert cron.returncode == 0, cron.stderr
    assert json.loads(cron.stdout)["operations.schedule"] == {"value": "*/30 * * * *", "source": "-S"}
    assert typo.returncode == 2 and "did you mean 'federation.rounds'?" in typo.stderr
    assert not (tmp_path / "data").exists()


# --- the end of a run (issue #24, item 5) -------------------------------------------------------------------------


def test_a_runs_closing_lines_fit_80_columns_and_point_where_to_look_next():
    from fedrec.coordinator.summary import closing_lines

    summary = {"model": "neumf", "he": True, "selected_round": 31, "rounds": 40, "selection_metric": "val_hr@10",
               "hr@10": 0.6411, "ndcg@10": 0.3702, "full_hr@10": 0.1161, "full_ndcg@10": 0.0571,
               "seconds_per_round_median": 1.69, "bytes_per_round_mean": 1_841_674.2, "excluded": ["7"],
               "reports": "reports/5f0c1b7e-2a51-4a8e-9d0e-0c0e4bb8b0a1", "mlflow_run_id": "a" * 32,
               "mlflow_experiment_id": "123", "federation": "federation-20261205-053743",
               "run_id": "5f0c1b7e-2a51-4a8e-9d0e-0c0e4bb8b0a1", "prefect_flow_run_id": "5f0c1b7e-2a51-4a8e-9d0e-0c0e4bb8b0a1"}

    lines = closing_lines(summary, 10, prefect_port=4200, mlflow_port=5000)
    text = "\n".join(lines)

    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert "test hr@10" in text and "0.6411" in text and "seconds_per_" not in text  # no header cut to 80 columns
    assert "reports/5f0c1b7e-2a51-4a8e-9d0e-0c0e4bb8b0a1/" in text and "a" * 32 in text and "fedrec ui" in text
    assert f"http://127.0.0.1:5000/#/experiments/123/runs/{'a' * 32}" in lines
    assert "http://127.0.0.1:4200/runs/flow-run/5f0c1b7e-2a51-4a8e-9d0e-0c0e4bb8b0a1" in lines
    assert "silos left out: 7" in text


@pytest.mark.slow
def test_the_runs_own_prefect_server_prints_no_view_at_link(tmp_path):
    # a run on the temporary server prefect_api starts (make run): its "View at" link would be dead after the run.
    # In its own process: Prefect's server object is a per-port singleton that this session's harness shares.
    import os
    import subprocess
    import sys

    script = (
        "from prefect import flow\n"
        "from fedrec.orchestration.launch import prefect_api\n"
        "@flow(name='tiny')\n"
        "def tiny():\n"
        "    return 1\n"
        "with prefect_api():\n"
        "    assert tiny() == 1\n")
    # a fresh PREFECT_HOME migrates a new database first: on a busy 2-core machine that can outlast Prefect's 20 s
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(tmp_path), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}

    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)

    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown[-3000:]
    assert "Beginning flow run" in shown  # Prefect's console log is here
    assert "View at" not in shown
