"""The one config tree: frozen dataclasses loaded from TOML, defaults only here.

Every field carries a one-line `doc` in its metadata; `docs/config.md` is generated from them
(`samctl config docs`) and a test fails when the two drift apart. The loader checks the whole file
and raises a single `ConfigError` listing every problem with its key, so a user fixes a config in
one pass instead of one error at a time; that loader lives in `sam_brain.config_load`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _f(default: Any, doc: str) -> Any:
    """A field with a default and its documentation line."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class ApiConfig:
    """The control API and chat endpoint."""

    host: str = _f(
        "127.0.0.1", "Address to bind; loopback by default so nothing leaves the machine."
    )
    port: int = _f(8765, "TCP port of the API (`curl localhost:8765/api/self`).")
    allowed_hosts: list[str] = _f(
        [],
        "Extra `Host` names (besides localhost, 127.0.0.1, [::1] and the bind address) the API"
        " answers to; other names are refused (DNS rebinding). `*` accepts any name.",
    )
    chat_keys_file: str = _f(
        "",
        "A file of API keys (one a line, mode 0600) accepted on /v1/* besides the API token;"
        " for remote chat clients that must not drive the control API.",
    )


@dataclass(frozen=True)
class SourcesConfig:
    """Where training material comes from."""

    sessions_dirs: list[str] = _f(
        ["~/.claude/projects"], "Directories watched for Claude Code transcripts (`**/*.jsonl`)."
    )
    quiet_minutes: float = _f(
        10.0, "A live transcript becomes trainable after this many minutes without writes."
    )
    archive_transcripts: bool = _f(
        True,
        "Keep a compressed copy of each raw transcript under the home (Claude Code deletes them after 30 days).",
    )
    archive_keep_days: float = _f(
        0.0,
        "Archived transcripts unchanged for longer than this are pruned daily (0 keeps them all); those the active, canary and rollback versions were trained on are kept.",
    )
    archive_max_mb: float = _f(
        2048.0,
        "Cap on the archive's size: the oldest unprotected transcripts go first (0 means no cap).",
    )
    git_repos: list[str] = _f(
        [], "Git repositories whose new commits become commit-message samples."
    )
    git_bot_authors: list[str] = _f(
        ["dependabot[bot]", "renovate[bot]", "github-actions[bot]"],
        "Commit authors whose commits are skipped.",
    )
    git_max_diff_chars: int = _f(4000, "Diffs are truncated to this many characters in a sample.")
    distill_inbox: str = _f(
        "", "Folder watched for distillation JSONL; empty means `<home>/distill/inbox`."
    )
    docs_paths: list[str] = _f([], "Folders scanned for Markdown docs and SKILL.md files.")
    exclude: list[str] = _f(
        [],
        "Glob patterns of projects, repos and paths never ingested (`~/work/acme`, `*/clients/*`, `acme-*`); see docs/operations.md#privacy.",
    )


@dataclass(frozen=True)
class PipelineConfig:
    """Turning raw material into clean samples."""

    min_chars: int = _f(8, "Samples whose assistant text is shorter than this are dropped.")
    max_tokens: int = _f(
        4096,
        "Token budget of a sample (estimated): multi-turn sessions are cut into windows of whole exchanges within it; a longer one is trimmed at a turn boundary.",
    )
    dedup_threshold: float = _f(
        0.85, "MinHash Jaccard similarity at or above which a sample is a near-duplicate."
    )
    split: list[float] = _f(
        [0.90, 0.05, 0.05], "Train/val/test shares; a session never spans two splits."
    )
    redact_emails: bool = _f(True, "Replace e-mail addresses with a placeholder.")
    pool_keep_versions: int = _f(
        20, "LanceDB versions of the pool kept by compaction (besides those of `pool_keep_days`)."
    )
    pool_keep_days: float = _f(
        1.0,
        "Pool versions younger than this many days are kept by compaction; a running training's always.",
    )


@dataclass(frozen=True)
class Profile:
    """One set of LoRA hyper-parameters (`[profiles.NAME]`)."""

    lora_rank: int = _f(8, "LoRA rank r.")
    lora_alpha: float = _f(16.0, "LoRA alpha; the update is scaled by alpha / rank.")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA input.")
    lora_keys: list[str] = _f(
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"],
        "Module names (relative to a transformer block) that get adapters.",
    )
    num_layers: int = _f(-1, "How many of the last transformer blocks get adapters; -1 means all.")
    batch_size: int = _f(4, "Sequences per micro-batch.")
    grad_accum: int = _f(4, "Micro-batches per optimizer step.")
    max_seq_length: int = _f(2048, "Longest sequence in tokens; longer samples are truncated.")
    grad_checkpoint: bool = _f(False, "Recompute activations in the backward pass to save memory.")
    learning_rate: float = _f(1e-4, "Peak learning rate (Adam).")
    epochs: float = _f(3.0, "Passes over the training split.")
    max_steps: int = _f(0, "Stop after this many optimizer steps; 0 means run the epochs.")
    eval_every: int = _f(50, "Optimizer steps between validation passes.")
    save_every: int = _f(50, "Optimizer steps between resumable checkpoints.")
    patience: int = _f(
        3, "Early stopping: validation passes without improvement before the run stops."
    )
    dpo_beta: float = _f(
        0.1, "DPO stage (runs when the pool has preference pairs): strength of the KL anchor."
    )
    dpo_learning_rate: float = _f(5e-6, "DPO stage: peak learning rate.")
    dpo_epochs: float = _f(1.0, "DPO stage: passes over the preference pairs.")
    dpo_max_steps: int = _f(0, "DPO stage: stop after this many steps; 0 means run the epochs.")


def _builtin_profiles() -> dict[str, Profile]:
    return {
        "8gb": Profile(
            lora_rank=4,
            lora_alpha=8.0,
            batch_size=1,
            grad_accum=4,
            # Agentic windows: 2048 holds 99% of single transcript messages and a few steps of
            # context; a step of the default 1.5B-4bit model needs ~4-6 GB (docs/operations.md).
            max_seq_length=2048,
            num_layers=8,
            grad_checkpoint=True,
            learning_rate=1e-4,
            epochs=1.0,
        ),
        "full": Profile(
            lora_rank=8,
            lora_alpha=16.0,
            batch_size=4,
            grad_accum=4,
            max_seq_length=2048,
            learning_rate=1e-4,
            epochs=3.0,
        ),
    }


@dataclass(frozen=True)
class RemoteResources:
    """What a remote (Ray) run asks the cluster for."""

    workers: int = _f(
        1, "Training processes; more than one runs the CUDA loop's DDP path under Ray Train."
    )
    gpus_per_worker: float = _f(0.0, "GPUs each worker needs (0: CPU only, gloo for DDP).")
    cpus_per_worker: float = _f(1.0, "CPUs each worker needs.")


@dataclass(frozen=True)
class TrainingConfig:
    """When and how adapters are trained."""

    backend: str = _f(
        "auto",
        "`auto`, `mlx` or `cuda`; auto picks CUDA where a GPU is, else MLX (torch without mlx-lm).",
    )
    min_for_training: int = _f(100, "New samples needed before training starts on its own.")
    profile: str = _f("8gb", "Name of the profile in `[profiles]` to train with.")
    mlx_base_model: str = _f(
        "mlx-community/Qwen2.5-Coder-1.5B-Instruct-4bit",
        "Base model for MLX: a hub id or a local path.",
    )
    cuda_base_model: str = _f(
        "Qwen/Qwen2.5-7B-Instruct", "Base model for CUDA: a hub id or a local path."
    )
    check_interval_seconds: float = _f(60.0, "How often the scheduler checks whether to train.")
    nightly_window: str = _f(
        "", "Train on the threshold only inside `HH:MM-HH:MM` local time; empty means any time."
    )
    max_runs_per_day: int = _f(3, "Cap on automatic runs per calendar day (forced runs count too).")
    max_retries: int = _f(2, "Automatic retries of a failed run, with exponential backoff.")
    retry_backoff_seconds: float = _f(300.0, "Delay before the first retry; doubles each time.")
    nice: int = _f(10, "Niceness added to the training subprocess so the machine stays responsive.")
    seed: int = _f(0, "Random seed for data order and adapter initialisation.")
    continue_from_active: bool = _f(
        True, "Start each run from the active version's adapter, so versions build on each other."
    )
    timeout_minutes: float = _f(
        240.0, "A training run longer than this is stopped and marked failed."
    )
    memory_budget_mb: float = _f(
        0.0,
        "Memory a run may use: the backend's pre-flight estimate is fitted under it by halving"
        " batch_size (then max_seq_length) before training starts. 0 reads the free memory at"
        " the run's start (GPU memory for CUDA on a GPU, else RAM); -1 turns the fit off.",
    )
    remote: str = _f(
        "",
        "Train on a Ray cluster instead of a local subprocess: `http://HOST:8265` (the Ray Jobs"
        " / dashboard address) or `ray://HOST:10001`; empty trains locally (docs/operations.md).",
    )
    remote_resources: RemoteResources = field(
        default_factory=RemoteResources, metadata={"doc": "What a remote run asks for."}
    )
    remote_fallback: str = _f(
        "",
        "`local`: when the cluster cannot be reached the run trains locally (the run record"
        " says so); empty: the run fails with the address in its reason.",
    )
    remote_storage: str = _f(
        "~/sam-brain-remote",
        "Folder on the cluster for each remote run's dataset copy, checkpoints and adapter"
        " (a resumed run continues from it); with several nodes, a mount every node shares.",
    )
    remote_max_upload_mb: float = _f(
        100.0, "Largest dataset + spec (+ the adapter a run builds on) sent with a remote job."
    )
    remote_timeout_minutes: float = _f(
        480.0, "A remote run (queueing on the cluster included) longer than this is stopped."
    )
    keep_runs: int = _f(
        10,
        "Run folders (dataset, checkpoints, log) kept under runs/; older ones are pruned after"
        " each release, never those of the active, canary or rollback-target version or of the"
        " run that is training or can resume. 0 keeps all.",
    )


@dataclass(frozen=True)
class DeploymentConfig:
    """Evaluation gate, versions, serving, canary and rollback."""

    keep_versions: int = _f(
        10,
        "Versions kept on disk; older ones and their run folders are pruned after each release (never the active, canary or rollback target). 0 keeps all.",
    )
    max_adapter_mb: float = _f(2048.0, "Sanity bound: an adapter larger than this is refused.")
    import_dirs: list[str] = _f(
        [],
        "Folders besides the home from which `POST /api/deploy` and `/api/canary` may take an"
        " adapter (the CLI takes any path).",
    )
    gate_margin: float = _f(
        0.0, "The candidate's mean test loss must beat the incumbent's by this much."
    )
    gate_alpha: float = _f(
        0.05, "Significance level of the paired test: a significantly worse candidate is blocked."
    )
    gate_prompts: int = _f(
        4, "Test conversations generated for the repetition/termination/leak checks."
    )
    gate_judge: bool = _f(
        False,
        "Also let the teacher (`[teacher]`) judge candidate vs. incumbent answers to held-out"
        " prompts, in both orders; its win rate, binomial test and agreement with the loss-based"
        " decision go into the gate report (they do not change the decision).",
    )
    gate_judge_prompts: int = _f(16, "Held-out prompts the judge compares answers on.")
    gate_max_repetition: float = _f(
        0.05,
        "Largest mean share of repeated 4-grams in the candidate's test answers, unless the"
        " reference (active version or base) repeats as much on the same prompts.",
    )
    gate_min_terminated: float = _f(
        0.75,
        "Smallest share of test answers that must end with end-of-turn within the budget,"
        " unless the reference ends no more of them on the same prompts.",
    )
    gate_relative_slack: float = _f(
        0.05,
        "A generation check below its bar still passes when the candidate is within this share"
        " of the reference's answers to the same prompts (training did not make it worse).",
    )
    gate_min_rows: int = _f(
        8,
        "Held-out rows the gate needs to judge a candidate; with fewer it is `ungated`: it may"
        " start as a canary but never goes straight to active.",
    )
    gate_holdout_share: float = _f(
        0.2,
        "Share of training sessions held out (whole sessions, by a stable hash) for the gate"
        " when the pool has no test split yet; see docs/deployment.md.",
    )
    gate_cases: list[str] = _f(
        [],
        "Task case files (JSONL; see docs/operations.md) the gate runs on base, incumbent and"
        " candidate for the default training: a candidate significantly worse on them is blocked."
        " Relative paths are taken from the data folder; `builtin:coding` is a shipped set of 10"
        " general coding cases (guards against forgetting).",
    )
    gate_case_max_tokens: int = _f(
        128, "Answer budget of a task case that sets no `max_tokens` of its own (greedy)."
    )
    serve_chat: bool = _f(True, "Serve the OpenAI-compatible `/v1/chat/completions` (MLX hosts).")
    shadow: bool = _f(
        False,
        "Shadow mode: while a canary runs, replay each routed request the active version answered on the canary afterwards (the client gets only the active version's answer); the replies count only in the canary's metrics, as `shadow_requests`.",
    )
    shadow_queue: int = _f(
        8, "Shadow replays waiting at most; more are dropped and counted (`shadow.dropped`)."
    )
    prompt_cache_mb: float = _f(
        256.0,
        "Memory for the KV caches of recent conversations, so a follow-up request only prefills its new tokens (0: off).",
    )
    max_prompt_tokens: int = _f(
        16384,
        "Longest chat prompt accepted, in tokens (never more than the model's context; 0: the context); longer ones answer 400 at once.",
    )
    max_request_mb: float = _f(8.0, "Largest chat request body accepted; larger ones answer 413.")
    request_timeout_seconds: float = _f(
        300.0,
        "Deadline of one chat request, waiting included; a request past it is stopped (504, or 503 while still queued). 0: none.",
    )
    max_queued_requests: int = _f(
        8,
        "Chat requests that may wait behind the one generating; more answer 503 with `Retry-After`.",
    )
    log_conversations: bool = _f(
        False,
        "Log each served chat completion (prompt, answer, version, id), scrubbed, under `<data>/conversations/`; `POST /v1/feedback` needs it. See docs/operations.md.",
    )
    log_keep_days: int = _f(
        30, "Days of conversation logs kept (one file a day; older ones are deleted). 0: keep all."
    )
    canary_steps: list[int] = _f(
        [10, 25, 50, 100],
        "Canary traffic weights in percent; the last step promotes. `[100]` skips the canary.",
    )
    canary_interval_seconds: float = _f(
        300.0, "How long each canary step lasts before analysis may advance it."
    )
    canary_min_requests: int = _f(20, "Requests a canary step must serve before it can advance.")
    monitor_interval_seconds: float = _f(
        30.0, "How often serving metrics are checked against the limits."
    )
    min_requests_to_judge: int = _f(10, "Requests a version must serve before the limits apply.")
    max_error_rate: float = _f(0.15, "Automatic rollback above this error rate.")
    max_latency_ms: float = _f(5000.0, "Automatic rollback above this mean latency.")
    max_memory_mb: float = _f(
        6144.0, "Automatic rollback above this resident memory while serving."
    )
    export_formats: list[str] = _f(
        [],
        "Formats the active version is exported to automatically, under `<data>/exports/VERSION/FORMAT` (`mlx`, `peft`, `fused`, `gguf`, `ollama`).",
    )


@dataclass(frozen=True)
class TeacherConfig:
    """A larger model that augments, generates and judges samples (`samctl teach`)."""

    provider: str = _f(
        "anthropic",
        "`anthropic` (the Messages API) or `openai` (any OpenAI-compatible server: Ollama, llama.cpp, vLLM, SAM Brain's own `/v1`).",
    )
    model: str = _f("claude-sonnet-4-5", "Model name sent to the provider.")
    base_url: str = _f(
        "", "Server address; empty means the provider's default (OpenAI-compatible needs one)."
    )
    api_key_env: str = _f(
        "",
        "Environment variable holding the API key; empty means `ANTHROPIC_API_KEY` or `OPENAI_API_KEY`. Keys are never read from this file.",
    )
    concurrency: int = _f(4, "Requests in flight at once.")
    max_output_tokens: int = _f(1024, "Longest answer asked of the teacher, in tokens.")
    max_retries: int = _f(4, "Retries of a rate-limited or overloaded request, with backoff.")
    timeout_seconds: float = _f(120.0, "Give up on one request after this long.")
    batch_min_requests: int = _f(
        200,
        "Campaigns at least this large go through the provider's batch API (Anthropic Message Batches).",
    )
    batch_poll_seconds: float = _f(30.0, "How often a running Message Batch is checked.")
    usd_per_mtok_input: float = _f(3.0, "Price per million input tokens, for the cost ledger.")
    usd_per_mtok_output: float = _f(15.0, "Price per million output tokens.")
    usd_per_mtok_cache_read: float = _f(0.3, "Price per million cached input tokens read.")
    usd_per_mtok_cache_write: float = _f(
        3.75, "Price per million input tokens written to the cache."
    )
    max_usd_per_day: float = _f(
        5.0, "Daily spend cap; a job stops cleanly when it is reached and resumes the next day."
    )


DEFAULT_TRAINING = "sam"
"""The unnamed default training's name: its model id, its lineage in the store, `/api/self`."""


@dataclass(frozen=True)
class NamedTraining:
    """One named training (`[trainings.NAME]`): its own samples, adapter lineage and model id
    `sam-NAME`. Empty fields fall back to `[training]`; see docs/operations.md#named-trainings."""

    sources: list[str] = _f(
        [], "Sources whose samples belong (`sessions`, `git`, `docs`, `teacher`...); empty: any."
    )
    projects: list[str] = _f(
        [],
        "Glob patterns of projects, repos and paths (as in `sources.exclude`) whose samples"
        " belong; empty: any.",
    )
    kinds: list[str] = _f([], "Sample kinds that belong (`sft`, `preference`); empty: both.")
    schemas: list[str] = _f(
        [], "Teacher schemas (`meta.schema`, the schema file's stem) whose samples belong."
    )
    mlx_base_model: str = _f("", "Base model for MLX; empty: `training.mlx_base_model`.")
    cuda_base_model: str = _f("", "Base model for CUDA; empty: `training.cuda_base_model`.")
    profile: str = _f("", "Profile in `[profiles]` to train with; empty: `training.profile`.")
    min_for_training: int = _f(
        0, "New samples of this training needed before it trains; 0: `training.min_for_training`."
    )
    gate_cases: list[str] = _f(
        [],
        "Task case files (JSONL) the gate runs for this training (as `deployment.gate_cases`"
        " does for the default); relative paths are taken from the data folder.",
    )


@dataclass(frozen=True)
class Config:
    """The whole config tree (`config.toml`)."""

    data_dir: str = _f(
        "", "Where state, pool and versions live; empty means the home (see README)."
    )
    log_level: str = _f("INFO", "Logging level of the daemon.")
    events_keep_days: float = _f(
        90.0, "Events older than this are pruned at daemon start and daily (0 keeps all)."
    )
    api: ApiConfig = field(default_factory=ApiConfig, metadata={"doc": "[api]"})
    sources: SourcesConfig = field(default_factory=SourcesConfig, metadata={"doc": "[sources]"})
    pipeline: PipelineConfig = field(default_factory=PipelineConfig, metadata={"doc": "[pipeline]"})
    training: TrainingConfig = field(default_factory=TrainingConfig, metadata={"doc": "[training]"})
    deployment: DeploymentConfig = field(
        default_factory=DeploymentConfig, metadata={"doc": "[deployment]"}
    )
    teacher: TeacherConfig = field(default_factory=TeacherConfig, metadata={"doc": "[teacher]"})
    profiles: dict[str, Profile] = field(
        default_factory=_builtin_profiles, metadata={"doc": "[profiles.NAME]"}
    )
    trainings: dict[str, NamedTraining] = field(
        default_factory=dict, metadata={"doc": "[trainings.NAME]"}
    )

    def profile(self) -> Profile:
        """The training profile selected by `training.profile`."""
        return self.profiles[self.training.profile]


# ---------------------------------------------------------------------------------------------
# Locations


def default_home() -> Path:
    """The data + config root: `SAM_BRAIN_HOME`, else the platform's usual place."""
    env = os.environ.get("SAM_BRAIN_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path("~/Library/Application Support/sam-brain").expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(xdg).expanduser() / "sam-brain"


def default_config_path() -> Path:
    """`SAM_BRAIN_CONFIG`, else `<SAM_BRAIN_HOME>/config.toml`, else the platform config dir."""
    env = os.environ.get("SAM_BRAIN_CONFIG")
    if env:
        return Path(env).expanduser()
    if os.environ.get("SAM_BRAIN_HOME") or sys.platform == "darwin":
        return default_home() / "config.toml"
    xdg = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(xdg).expanduser() / "sam-brain" / "config.toml"


def data_dir(config: Config) -> Path:
    """The directory holding state.db, the pool, versions and runs."""
    return Path(config.data_dir).expanduser() if config.data_dir else default_home()


def iter_fields(cls: type = Config, prefix: str = "") -> typing.Iterator[tuple[str, Any, str, str]]:
    """Yield (key, default, type name, doc) for every leaf field; used to generate docs/config.md."""
    default = cls()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, f"{key}.")  # type: ignore[arg-type]
        elif cls is Config and f.name == "profiles":
            yield from iter_fields(Profile, "profiles.NAME.")
        elif cls is Config and f.name == "trainings":
            yield from iter_fields(NamedTraining, "trainings.NAME.")
        else:
            name = getattr(tp, "__name__", str(tp)).replace("typing.", "")
            if typing.get_origin(tp) is list:
                name = f"list[{typing.get_args(tp)[0].__name__}]"
            yield key, value, name, f.metadata.get("doc", "")
