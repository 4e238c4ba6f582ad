"""`samctl teach generate --from SCHEMA`: synthetic request -> command examples from a CLI schema.

As in clitron: the teacher gets the schema once (the cached system prompt) and, per request, a
batch size and a command to focus on (cycling through the schema's leaf commands so a campaign
covers all of them). Each example in an answer is checked (JSON, known command and subcommand,
argument names and types, required arguments, flags); valid ones become single-turn samples
(system: `CliSchema.system_prompt()`, user: the request, assistant: the command as compact JSON,
so the behaviour stays tied to that prompt and a general lineage can hold these samples too) with source `teacher`,
`meta["schema"]` and, for `--training NAME`, `meta["training"]`. Near duplicates are removed by
the pool's dedup when the runner stores them. Drops are counted by reason.
"""

from __future__ import annotations

import math
from collections import Counter

from sam_brain.protocols import Sample, TeacherReply, TeacherRequest
from sam_brain.teach.jobs import JobContext, Outcome, json_array, sample_id
from sam_brain.teach.schema import CliSchema, canonical, check_example, load_schema

DEFAULT_COUNT = 100
DEFAULT_BATCH = 10

INSTRUCTIONS = """You write training data for a model that turns what a person types into a \
command of one CLI. The CLI's schema (YAML) follows. Write examples as a JSON array, nothing else:
[{{"input": "what a person might type", "output": {{"command": "...", "subcommand": "...", \
"args": {{"name": value}}, "flags": ["name"]}}}}]
Rules: use only commands, subcommands, arguments and flags from the schema; leave out \
"subcommand" for commands without subcommands; give every required argument; values must have \
the argument's type (integers as numbers, enums from their values, booleans as true/false); \
flags are listed by name. Vary wording, formality, word order and synonyms; include and omit \
optional arguments; never repeat an input.

CLI: {cli_name} ({description})
Schema:
{schema}"""

PROMPT = """Write {n} different examples. Focus on `{focus}`{hint}. This is batch {i}: make \
them unlike typical first attempts."""


def requests_for(schema: CliSchema, count: int, batch: int) -> list[TeacherRequest]:
    """The campaign: ceil(count / batch) requests sharing one cached system prompt."""
    system = INSTRUCTIONS.format(
        cli_name=schema.cli_name, description=schema.description, schema=schema.text.strip()
    )
    leaves = schema.leaves()
    out = []
    for i in range(math.ceil(count / batch)):
        n = min(batch, count - i * batch)
        leaf = leaves[i % len(leaves)]
        hint = f" ({leaf.description})" if leaf.description else ""
        text = PROMPT.format(n=n, focus=" ".join(leaf.path), hint=hint, i=i + 1)
        out.append(
            TeacherRequest(
                messages=[{"role": "user", "content": text}],
                system=system,
                temperature=1.0,
                key=f"b{i:05d}",
            )
        )
    return out


class GenerateJob:
    kind = "generate"

    def run(self, ctx: JobContext) -> None:
        spec = ctx.spec
        schema = load_schema(spec.source)
        count = spec.count or DEFAULT_COUNT
        batch = int(spec.options.get("batch_size", DEFAULT_BATCH))
        requests = requests_for(schema, count, max(1, batch))
        ctx.set_total(len(requests))
        ctx.log(f"{count} examples of {schema.cli_name} in {len(requests)} requests")

        def handle(request: TeacherRequest, reply: TeacherReply) -> Outcome:
            return outcome(ctx.job_id, schema, spec.training, request, reply)

        ctx.ask_all(requests, handle)


def outcome(
    job_id: str, schema: CliSchema, training: str, request: TeacherRequest, reply: TeacherReply
) -> Outcome:
    """The valid examples of one answer as samples, and every drop by reason."""
    out = Outcome(counts=Counter())
    examples = json_array(reply.text)
    # Exactly one of invalid_json / empty_answer / parsed per answer, then one count per example.
    if examples is None:
        out.counts["invalid_json"] += 1
        return out
    out.counts["parsed" if examples else "empty_answer"] += 1
    seen: set[str] = set()
    for i, example in enumerate(examples):
        reason = check_example(schema, example)
        if reason is None and example["input"].strip().lower() in seen:
            reason = "repeated_input"
        if reason is not None:
            out.counts[reason] += 1
            continue
        seen.add(example["input"].strip().lower())
        out.counts["valid"] += 1
        meta = {"schema": schema.name, "job": job_id, "teacher_model": reply.model}
        if training:
            meta["training"] = training
        out.samples.append(
            Sample(
                id=sample_id(job_id, request.key, i),
                source="teacher",
                source_key=f"teacher:{job_id}:{request.key}:{i}",
                group=f"teacher:{job_id}:{request.key}",
                messages=[
                    {"role": "system", "content": schema.system_prompt()},
                    {"role": "user", "content": example["input"].strip()},
                    {"role": "assistant", "content": canonical(example["output"])},
                ],
                strategy="B",
                tier="A",
                score=0.8,
                meta=meta,
            )
        )
    return out
