"""Two-process DistributedDataParallel on CPU (gloo): the example trainer runs a step, metrics are reduced."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "cub"))

from scm_calib.data import ensure_generated_dataset  # noqa: E402

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, data: str, output: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
    )
    import config as cub_config
    import train
    from timm.utils import unwrap_model

    config = cub_config.PRESETS["generated"].updated(
        dict(
            data_root=data,
            model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
            checkpoint=None,
            image_size=32,
            epochs=1,
            batch_size=2,
            warmup_epochs=0,
            overlays=0,
            output=output,
            name="ddp",
            threads=1,
            device="cpu",
        ),
        "test",
    )
    models: list[torch.nn.Module] = []
    original = train.build_model

    def keep(*args: object) -> torch.nn.Module:
        models.append(original(*args))
        return models[-1]

    train.build_model = keep
    summary = train.run(config)
    weights = torch.cat([p.detach().flatten() for p in unwrap_model(models[0]).parameters()])
    gathered = [torch.zeros_like(weights) for _ in range(WORLD_SIZE)]
    dist.all_gather(gathered, weights)
    result = {"summary": summary, "same_weights": all(torch.equal(g, gathered[0]) for g in gathered)}
    Path(output, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    data = ensure_generated_dataset(
        tmp_path / "data", num_classes=3, train_per_class=4, test_per_class=3, val_per_class=1, min_size=32, max_size=40
    )
    mp.spawn(_worker, args=(_free_port(), str(data), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    assert all(result["same_weights"] for result in results)
    assert results[0]["summary"]["test"] == results[1]["summary"]["test"]
    # 9 test images split 5 / 4 over the ranks: the reduced accuracy is a multiple of 1/9.
    assert any(abs(results[0]["summary"]["test"]["Top1Cls"] - 100 * k / 9) < 1e-9 for k in range(10))
    history = results[0]["summary"]["history"]
    assert len(history) == 1 and history[0]["loss"] > 0
    assert (tmp_path / "ddp" / "metrics.json").is_file() and (tmp_path / "ddp" / "checkpoint.pt").is_file()
