"""The authors' one-sided `pull` protocol (PopSGD as published), re-implemented from its description
in issue 18 -- not their code. Run one process per node under MPI:

    mpirun -n 8 python pull_protocol.py --local-steps 1 --seed 1 --out result.json

What each rank does:
  * holds a distinct shard of the training set (a seeded permutation cut into `size` strided parts)
    and reshuffles it at the start of every epoch with its own random stream;
  * starts from the same model as every other rank (PyTorch's default initialisation on rank 0,
    broadcast), publishes it into its own MPI window and waits on a barrier, so that no rank reads
    a window nobody wrote;
  * after every SGD step, copies its model into its window under an exclusive lock on that window;
  * every H steps picks a partner uniformly at random among the other ranks (a random stream of its
    own), reads the partner's window under a shared lock, and sets its model to
    (own published copy + partner's copy) / 2; only this rank changes;
  * passes a barrier at the start and at the end of every epoch.
At the end, rank 0 evaluates the mean of all ranks' models on the test set and writes JSON.
"""

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mpi4py import MPI

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_split(data_dir, prefix):
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels.astype(np.int64)


class Mlp(nn.Module):
    def __init__(self, inputs, hidden, classes):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def flat_params(model):
    return torch.cat([p.data.reshape(-1) for p in model.parameters()])


def load_flat(model, flat):
    offset = 0
    for p in model.parameters():
        n = p.numel()
        p.data.copy_(flat[offset: offset + n].view_as(p))
        offset += n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--local-steps", type=int, default=1, help="H: SGD steps between interactions")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--data", default=DEFAULT_DATA, help="directory of the Fashion-MNIST IDX .gz files")
    ap.add_argument("--out", default=None, help="JSON result (rank 0)")
    ap.add_argument("--publish-after-average", action="store_true",
                    help="diagnostic, not the protocol: also publish right after each average")
    args = ap.parse_args()
    if args.local_steps < 1:
        sys.exit("--local-steps must be at least 1")

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size < 2:
        sys.exit("run at least 2 ranks (mpirun -n 8 ...): a rank needs a partner")
    torch.set_num_threads(1)

    try:
        train_x, train_y = load_split(args.data, "train")
        test_x, test_y = load_split(args.data, "t10k")
    except OSError as e:
        sys.exit(f"cannot read Fashion-MNIST in {args.data}: {e} (apt-get install dataset-fashion-mnist)")
    # Zero mean, unit variance with the training split's statistics (as swarm's data loader does).
    mean, std = float(train_x.mean()), float(train_x.std())
    train_x = torch.from_numpy((train_x - mean) / std)
    test_x = torch.from_numpy((test_x - mean) / std)
    train_y, test_y = torch.from_numpy(train_y), torch.from_numpy(test_y)

    # Distinct shards: one permutation shared by all ranks, cut into `size` strided parts.
    perm = np.random.default_rng(args.seed).permutation(len(train_y))
    shard = torch.from_numpy(perm[rank::size].copy())
    data_rng = torch.Generator().manual_seed(args.seed * 1_000_003 + 2 * rank + 1)
    partner_rng = np.random.default_rng([args.seed, rank, 7])

    # One common starting point: PyTorch's default initialisation on rank 0, broadcast.
    torch.manual_seed(args.seed)
    model = Mlp(train_x.shape[1], args.hidden, 10)
    start = comm.bcast(flat_params(model).numpy() if rank == 0 else None, root=0)
    load_flat(model, torch.from_numpy(start))
    dim = start.size

    window_mem = np.zeros(dim, dtype=np.float32)
    win = MPI.Win.Create(window_mem, disp_unit=4, comm=comm)
    partner_copy = np.empty(dim, dtype=np.float32)

    def publish():
        win.Lock(rank, MPI.LOCK_EXCLUSIVE)
        window_mem[:] = flat_params(model).numpy()
        win.Unlock(rank)

    publish()
    comm.Barrier()  # every window holds a model before anyone reads one

    interactions = 0
    steps = 0
    loss_sum = 0.0
    started = time.time()
    for epoch in range(args.epochs):
        comm.Barrier()
        order = shard[torch.randperm(len(shard), generator=data_rng)]
        for lo in range(0, len(order), args.batch_size):
            idx = order[lo: lo + args.batch_size]
            for p in model.parameters():
                p.grad = None
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-args.lr)
            loss_sum += loss.item()
            steps += 1
            publish()
            if steps % args.local_steps == 0:
                partner = int(partner_rng.integers(size - 1))
                partner += partner >= rank
                win.Lock(partner, MPI.LOCK_SHARED)
                win.Get(partner_copy, partner)
                win.Unlock(partner)
                own = window_mem.copy()  # our published copy (nobody else writes it)
                load_flat(model, torch.from_numpy((own + partner_copy) * 0.5))
                interactions += 1
                if args.publish_after_average:
                    publish()
        comm.Barrier()

    seconds = time.time() - started
    total = np.zeros(dim, dtype=np.float64)
    comm.Reduce(flat_params(model).numpy().astype(np.float64), total, op=MPI.SUM, root=0)
    counts = comm.gather((steps, interactions, loss_sum), root=0)
    win.Free()
    if rank != 0:
        return
    load_flat(model, torch.from_numpy((total / size).astype(np.float32)))
    with torch.no_grad():
        predictions = model(test_x).argmax(dim=1)
        accuracy = (predictions == test_y).double().mean().item()
    result = {
        "protocol": "authors-pull",
        "ranks": size,
        "local_steps": args.local_steps,
        "seed": args.seed,
        "epochs": args.epochs,
        "publish_after_average": args.publish_after_average,
        "final_test_accuracy": accuracy,
        "steps_per_rank": counts[0][0],
        "interactions": sum(c[1] for c in counts),
        "train_loss": sum(c[2] for c in counts) / sum(c[0] for c in counts),
        "train_seconds": seconds,
        "torch": torch.__version__,
        "mpi": MPI.Get_library_version().splitlines()[0].rstrip("\x00"),
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
