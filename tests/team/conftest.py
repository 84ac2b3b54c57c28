"""The team's stack as real processes on 127.0.0.1 (deploy/stack.py: PostgreSQL, `rclone
serve s3`, `mlflow server`), started once for these tests on free ports and always
stopped by process id; and a small-profile project that logs to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import stack as team_stack
from harness.serve import free_port
from tests.conftest import Project, new_project


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[team_stack.Stack]:
    folder = tmp_path_factory.mktemp("stack")
    try:
        running = team_stack.up(
            folder, pg_port=free_port(), s3_port=free_port(), mlflow_port=free_port()
        )
    except team_stack.StackError as error:
        team_stack.down(folder, purge=True)
        pytest.fail(f"the team stack did not start: {error}")
    try:
        yield running
    finally:
        team_stack.down(folder, purge=True)


def s3_client(stack: team_stack.Stack):
    import boto3

    secret = team_stack.credentials(stack.dir)
    return boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=secret["s3_key"],
        aws_secret_access_key=secret["s3_secret"],
    )


def use_remote(project: Project, stack: team_stack.Stack) -> None:
    """The DVC remote in the stack's bucket, configured as a user would (its keys in
    .dvc/config.local, which git ignores)."""
    for command in team_stack.dvc_remote(stack, "s3://dvc/project"):
        project.run(*command)


@pytest.fixture(scope="session")
def server_project(
    tmp_path_factory: pytest.TempPathFactory, mirror: Path, stack: team_stack.Stack
) -> Project:
    """A small-profile project whose every stage logs to the stack's tracking server,
    after its first `dvc repro`."""
    project = new_project(tmp_path_factory.mktemp("team-project"), mirror)
    project.env["MLFLOW_TRACKING_URI"] = stack.tracking_uri
    use_remote(project, stack)
    project.repro_result = project.run("dvc", "repro")
    return project
