"""Run one nnU-Net v2 entry point in this process: ``python -m sbldm.segmentation._nnunet_launch ENTRY ARGS...``.

``sbldm.segmentation.nnunet`` runs every nnU-Net step through this module in a subprocess. Before
nnU-Net's own entry point (``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train``,
``nnUNetv2_predict``) is called with ``ARGS``, it

- makes a broken optional ``timm`` fail cleanly: nnU-Net's trainer lookup imports every
  trainer module, and the Primus trainers import timm, which imports torchvision; a
  torchvision wheel that does not match torch raises ``RuntimeError: operator
  torchvision::nms does not exist`` and the lookup dies. If ``import timm`` fails, timm
  and torchvision are blocked (importing them raises ImportError) and every nnU-Net
  trainer module that then fails to import is replaced by an empty stub, so the lookup
  skips it. Nothing is changed when timm imports.
- caps torch's threads at ``SBLDM_NNUNET_THREADS`` (nnU-Net's CPU entry points ask for
  every core, which on a shared machine is slower than one or two threads), and
- flushes denormals on CPU (a small net's backward pass slows down 20-50x without).

Usage: ``python -m sbldm.segmentation._nnunet_launch {plan_and_preprocess,train,predict} [nnU-Net args]``.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import types

ENTRIES = {
    "plan_and_preprocess": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
                            "plan_and_preprocess_entry", "nnUNetv2_plan_and_preprocess"),
    "train": ("nnunetv2.run.run_training", "run_training_entry", "nnUNetv2_train"),
    "predict": ("nnunetv2.inference.predict_from_raw_data", "predict_entry_point", "nnUNetv2_predict"),
}

TRAINER_PACKAGE = "nnunetv2.training.nnUNetTrainer"
_BLOCKED = ("timm", "torchvision")


def _drop_modules(prefixes) -> None:
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            del sys.modules[name]


def guard_optional_imports(stub_trainers: bool = True) -> list[str]:
    """Block a timm that cannot be imported and (``stub_trainers``) stub the nnU-Net
    trainer modules that need it. Returns the names of the stubbed modules."""
    try:
        import timm  # noqa: F401
        return []
    except Exception as e:  # ImportError, or RuntimeError from a mismatched torchvision
        reason = f"{type(e).__name__}: {e}"
    _drop_modules(_BLOCKED)
    for name in _BLOCKED:
        sys.modules[name] = None  # ``import timm`` now raises ImportError
    stubbed = _stub_unimportable(TRAINER_PACKAGE) if stub_trainers else []
    print(f"sbldm: timm cannot be imported ({reason.splitlines()[0]}); blocked timm/torchvision and "
          f"stubbed nnU-Net trainer modules that need them: {', '.join(stubbed) or 'none'}", file=sys.stderr)
    return stubbed


def _stub_unimportable(package: str) -> list[str]:
    """Import every module under ``package``; put an empty module in place of those that
    raise ImportError (a blocked optional dependency), so nnU-Net's lookup skips them."""
    stubbed = []
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        name = f"{package}.{info.name}"
        try:
            importlib.import_module(name)
        except ImportError as e:
            stub = types.ModuleType(name, f"sbldm stub: {name} needs an unavailable module ({e})")
            if info.ispkg:
                stub.__path__ = []
            sys.modules[name] = stub
            stubbed.append(name)
            continue
        if info.ispkg:
            stubbed += _stub_unimportable(name)
    return stubbed


def _cap_threads() -> None:
    import torch

    n = os.environ.get("SBLDM_NNUNET_THREADS", "").strip()
    if n:
        cap = max(1, int(n))
        original = torch.set_num_threads
        original(cap)
        torch.set_num_threads = lambda k: original(max(1, min(int(k), cap)))
    torch.set_flush_denormal(True)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ENTRIES:
        raise SystemExit(f"usage: python -m sbldm.segmentation._nnunet_launch {{{','.join(ENTRIES)}}} [nnU-Net arguments]")
    entry, args = argv[0], argv[1:]
    try:
        import nnunetv2  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"nnunetv2 is not installed ({e}); install the nnunet extra: pip install -e .[nnunet]")
    _cap_threads()
    guard_optional_imports(stub_trainers=entry in ("train", "predict"))  # the two that look trainers up
    module, function, program = ENTRIES[entry]
    sys.argv = [program, *args]
    getattr(importlib.import_module(module), function)()


if __name__ == "__main__":
    main()
