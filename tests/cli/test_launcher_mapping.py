"""The cluster-environment mapping behind the Docker entrypoint and launch/ scripts, and the device fallback."""

from __future__ import annotations

import pytest

from fts_dist.adapters import strategy_needs_gpu
from fts_dist.errors import FTSConfigError
from fts_dist.runtime.fallback import (
    DeviceRequest,
    plan_devices,
    plan_fallback,
    plan_launched,
    requested_count,
    strategy_name,
)
from fts_dist.runtime.launcher import LaunchConfigError, command, first_slurm_host, torchrun_args


def test_slurm_node_maps_to_a_c10d_rendezvous_on_the_first_host() -> None:
    env = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "3", "SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "gpu[07-09]",
           "SLURM_GPUS_ON_NODE": "8"}  # fmt: skip
    assert torchrun_args(env) == [
        "--nnodes", "3", "--node_rank", "2", "--nproc_per_node", "8", "--max-restarts", "0",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "gpu07:29500", "--rdzv-id", "4242",
    ]  # fmt: skip


def test_pytorchjob_world_size_and_rank_count_pods() -> None:
    env = {"MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "4", "RANK": "1"}
    args = torchrun_args(env, gpus=8)
    assert args[:4] == ["--nnodes", "4", "--node_rank", "1"]
    assert "--nproc_per_node" in args and args[args.index("--nproc_per_node") + 1] == "8"
    assert args[-4:] == ["--rdzv-endpoint", "job-master-0:23456", "--rdzv-id", "fts_dist"]


def test_torchrun_style_variables_win_over_pytorchjob_ones() -> None:
    env = {"MASTER_ADDR": "m", "WORLD_SIZE": "16", "RANK": "9", "NNODES": "2", "NODE_RANK": "1",
           "NPROC_PER_NODE": "8", "FTS_MAX_RESTARTS": "3"}  # fmt: skip
    args = torchrun_args(env)
    assert args[:8] == ["--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "8", "--max-restarts", "3"]


def test_one_node_without_a_master_runs_standalone_on_its_devices() -> None:
    assert torchrun_args({}, gpus=0) == ["--standalone", "--nproc_per_node", "1", "--max-restarts", "0"]
    assert torchrun_args({}, gpus=4)[:3] == ["--standalone", "--nproc_per_node", "4"]


@pytest.mark.parametrize(
    ("env", "message"),
    [({"NNODES": "2", "MASTER_ADDR": "m"}, "set NODE_RANK"), ({"NNODES": "2", "NODE_RANK": "0"}, "set MASTER_ADDR")],
)
def test_missing_settings_are_named(env: dict, message: str) -> None:
    with pytest.raises(LaunchConfigError, match=message):
        torchrun_args(env)


@pytest.mark.parametrize(
    ("nodelist", "first"), [("node1", "node1"), ("a[03-05,09],b1", "a03"), ("gpu[12]", "gpu12"), ("x,y", "x")]
)
def test_first_slurm_host(nodelist: str, first: str) -> None:
    assert first_slurm_host(nodelist) == first


def test_restarts_make_fit_resume_from_the_last_checkpoint() -> None:
    assert command({}, ["fit", "--config", "c.yaml"], max_restarts=2)[-1] == "--ckpt_path=last"
    assert command({}, ["fit", "--config", "c.yaml"], max_restarts=0)[-1] == "c.yaml"
    assert command({}, ["fit", "--ckpt_path=x.ckpt"], max_restarts=2)[-1] == "--ckpt_path=x.ckpt"


@pytest.mark.parametrize(
    ("request_", "gpus", "changed"),
    [
        (DeviceRequest("gpu", 8, "ddp"), 0, ("cpu", 1, "auto")),
        (DeviceRequest("gpu", 8, "ddp"), 1, ("gpu", 1, "auto")),
        (DeviceRequest("auto", "0,1", "ddp"), 0, ("cpu", 1, "auto")),
        (DeviceRequest("gpu", 2, "ddp", num_nodes=4), 8, ("gpu", 1, "auto")),
        (DeviceRequest("gpu", 4, "ddp"), 4, None),
        (DeviceRequest("auto", "auto", "auto"), 0, None),
        (DeviceRequest("cpu", 2, "ddp"), 0, None),
    ],
)
def test_plan_fallback(request_: DeviceRequest, gpus: int, changed) -> None:
    planned, notice = plan_fallback(request_, gpus, strategy_needs_gpu)
    if changed is None:
        assert planned == request_ and notice is None
    else:
        assert (planned.accelerator, planned.devices, planned.strategy) == changed and planned.num_nodes == 1
        assert notice and notice.startswith("fts_dist: fallback:")


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (DeviceRequest("gpu", 8, {"class_path": "pytorch_lightning.strategies.DeepSpeedStrategy"}), "deepspeed"),
        (DeviceRequest("gpu", 8, "fsdp"), "strategy 'fsdp' needs CUDA GPUs"),
        (DeviceRequest("gpu", 8, "ddp", precision="16-mixed"), "precision '16-mixed' needs a GPU"),
    ],
)
def test_plan_fallback_refuses_what_cannot_run_on_cpu(request_: DeviceRequest, match: str) -> None:
    with pytest.raises(FTSConfigError, match=match):
        plan_fallback(request_, 0, strategy_needs_gpu)


def test_launched_jobs_take_their_shape_from_the_launcher() -> None:
    planned, notice = plan_launched(DeviceRequest("gpu", 8, "ddp"), 16, 8, 8, strategy_needs_gpu)
    assert (planned.devices, planned.num_nodes) == (8, 2) and notice
    planned, notice = plan_launched(DeviceRequest("auto", "auto", "auto"), 2, 2, 0, strategy_needs_gpu)
    assert (planned.accelerator, planned.devices) == ("cpu", 2)


@pytest.mark.parametrize(
    ("devices", "count"), [(4, 4), (-1, None), ("auto", None), ("0,1,2", 3), ([0, 1], 2), ("2", 2)]
)
def test_requested_count(devices, count) -> None:
    assert requested_count(devices) == count


def test_strategy_names() -> None:
    assert strategy_name("DDP") == "ddp"
    assert strategy_name({"class_path": "pytorch_lightning.strategies.FSDPStrategy"}) == "fsdp"


def test_which_strategy_needs_a_gpu_comes_from_the_adapter_registry(adapter_registry) -> None:
    from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy

    from fts_dist.adapters import register_adapter

    class ClusterOnly(DDPStrategy):
        pass

    register_adapter(ClusterOnly, None, needs_gpu=True)
    with pytest.raises(FTSConfigError, match="strategy 'clusteronly' needs CUDA GPUs"):
        plan_fallback(DeviceRequest("gpu", 8, ClusterOnly()), 0, strategy_needs_gpu)
    assert strategy_needs_gpu("fsdp") and strategy_needs_gpu(FSDPStrategy) and not strategy_needs_gpu("ddp")
    with pytest.raises(FTSConfigError, match="strategy 'deepspeed_stage_3' needs CUDA GPUs and this node has none"):
        plan_devices(DeviceRequest("auto", "auto", "deepspeed_stage_3"), {"WORLD_SIZE": "2"}, 0, strategy_needs_gpu)
