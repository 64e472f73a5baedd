"""The end-to-end harness runs what a user runs, and says what it changes.

A setting a test changes for its own convenience is a class of bug it can no longer see. So every
environment variable the harness sets in a user's shell or an agent's environment is one the README
tells a user to set (its server variables, the variables of its agent commands) or is declared in
``TEST_ONLY_SETTINGS`` with its reason; the flows' launch is the README's command verbatim, and their
sweep the README's with only the options ``SWEEP_OPTIONS`` declares.
"""

from __future__ import annotations

import os
import re
import shlex

from tests.e2e.flows import AGENTS, LAUNCH, SWEEP, SWEEP_OPTIONS
from tests.e2e.harness import TEST_ONLY_SETTINGS, ServerTarget, agent_environment, client_environment
from tests.readme_commands import documentation_text, environment_and_argv, the_command


def readme_variables() -> set[str]:
    """What the README tells a user to set: the SDK's server variables (step 1 of "Running on a ClearML server")
    and the variables its agent commands set."""
    [listed] = re.findall(r"or the standard\s+variables ((?:`CLEARML_\w+`,?\s*)+)", documentation_text())
    server = set(re.findall(r"`(CLEARML_\w+)`", listed))
    agents = {name for command in AGENTS.values() for name in environment_and_argv(command)[0]}
    return server | agents


def harness_settings(tmp_path, monkeypatch) -> set[str]:
    """The variables the harness sets, in a user's shell and in both kinds of agent (README commands included): what
    its environments hold beyond a shell that has nothing but PATH."""
    monkeypatch.setattr(os, "environ", {"PATH": os.environ["PATH"]})
    server = ServerTarget(
        env={name: f"value of {name}" for name in readme_variables() if name.startswith("CLEARML_") and "AGENT" not in name}, api=None
    )
    environments = [client_environment(server, tmp_path / "user")]
    for builds_venv in (False, True):
        command_env, _ = environment_and_argv(AGENTS["gpu"])
        environments.append({**agent_environment(server, tmp_path / f"agent-{builds_venv}", "e2e-gpu", builds_venv), **command_env})
    return {name for env in environments for name in env} - {"PATH"}


def test_every_setting_of_the_harness_is_the_readmes_or_declared_test_only_with_its_reason(tmp_path, monkeypatch):
    settings = harness_settings(tmp_path, monkeypatch)
    undeclared = settings - readme_variables() - set(TEST_ONLY_SETTINGS)
    assert not undeclared, (
        f"the e2e harness sets {sorted(undeclared)}, which the README does not tell a user to set: declare each in TEST_ONLY_SETTINGS with its reason"
    )
    stale = set(TEST_ONLY_SETTINGS) - settings
    assert not stale, f"TEST_ONLY_SETTINGS declares {sorted(stale)}, which the harness no longer sets"
    assert all(len(reason) > 20 for reason in TEST_ONLY_SETTINGS.values())


def test_the_flows_run_the_readmes_commands_with_only_the_declared_options():
    assert LAUNCH == the_command("python pipelines/run_pipeline.py", "--preset tiny")
    readme_sweep = the_command("python pipelines/run_hpo.py", "--run-on")
    assert SWEEP.startswith(readme_sweep + " ")
    added = shlex.split(SWEEP.removeprefix(readme_sweep))
    assert [" ".join(added[i : i + 2]) for i in range(0, len(added), 2)] == list(SWEEP_OPTIONS)
    assert all(environment_and_argv(command)[1][:2] == ["clearml-agent", "daemon"] for command in AGENTS.values())
