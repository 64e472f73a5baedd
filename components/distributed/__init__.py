"""Data-parallel training: which rank a process is, the collectives the loop needs, and starting ranks.

- :mod:`components.distributed.world`: torch.distributed's environment contract (torchrun's
  ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), joining it with a
  bounded wait, and the sums, broadcasts and gathers of the training loop. A process outside any
  run is a world of one, where every collective is the identity: the single-device loop is the
  distributed loop at world size 1.
- :mod:`components.distributed.launch`: the train step's ``--nproc-per-node N``: the step's own
  process is rank 0 (it owns the ClearML task) and starts ranks 1..N-1 on this machine, with the
  same environment torchrun would give them, their console output forwarded to its own.
"""
