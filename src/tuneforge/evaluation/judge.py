"""LLM-as-judge over generated answers, through any OpenAI-compatible endpoint (the tuneforge server too).

Single-answer grading (1-10) of base and tuned, and pairwise A/B asked in both orders: a verdict that flips
with the order is position bias and counts as a tie. A request that fails, times out, or gets a malformed
reply or an answer with no verdict is counted per example, never a crash; after a few connection failures or
timeouts in a row the rest is skipped. `timeout_s` bounds each request as a whole: the async client's
request is cancelled at the deadline (httpx's own timeouts apply per read, so a judge that sends a byte a
second would never trip them).
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

from tuneforge.config import JudgeConfig
from tuneforge.errors import TuneforgeError

RUBRICS = {
    "helpfulness": "Judge how helpful, relevant, accurate and clear the answer is for the user's request.",
    "correctness": "Judge only whether the answer is correct and complete, compared with the reference.",
}
SYSTEM = "You are an impartial judge of answers written by AI assistants. {rubric}"
SINGLE = (
    "[Question]\n{question}\n\n[Reference answer]\n{reference}\n\n[Answer]\n{answer}\n\n"
    "Rate the answer on a scale of 1 to 10. Explain briefly, then end with exactly: Rating: [[N]]"
)
PAIRWISE = (
    "[Question]\n{question}\n\n[Reference answer]\n{reference}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}\n\n"
    "Which answer is better? Do not let the order or the length sway you. Explain briefly, then end with "
    "exactly [[A]], [[B]] or [[C]] for a tie."
)
MAX_CONNECTION_FAILURES = 3
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_CHOICE = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def rubric_text(rubric: str) -> str:
    if rubric in RUBRICS:
        return RUBRICS[rubric]
    path = Path(rubric)
    if not path.is_file():
        raise TuneforgeError(
            f"unknown rubric '{rubric}'",
            where="eval.judge.rubric",
            fix=f"use {' or '.join(RUBRICS)}, or the path of a text file with your rubric",
        )
    return path.read_text(encoding="utf-8").strip()


def api_key(cfg: JudgeConfig) -> str:
    """The key from its environment variable (checked before any model is loaded)."""
    if cfg.api_key_env is None:
        return "not-needed"
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise TuneforgeError(
            f"the environment variable {cfg.api_key_env} is not set",
            where="eval.judge.api_key_env",
            fix=f"export {cfg.api_key_env}=... (the judge's key), or drop api_key_env for a local endpoint",
        )
    return key


def parse_rating(text: str) -> float | None:
    m = _RATING.findall(text)
    value = float(m[-1]) if m else None
    return value if value is not None and 1 <= value <= 10 else None


def parse_choice(text: str) -> str | None:
    m = _CHOICE.findall(text)
    return m[-1] if m else None


class _Endpoint:
    """A chat-completions client that counts connection failures in a row, to give up on a dead endpoint."""

    def __init__(self, cfg: JudgeConfig) -> None:
        from openai import AsyncOpenAI

        self.cfg = cfg
        self.client = AsyncOpenAI(
            base_url=cfg.base_url, api_key=api_key(cfg), timeout=cfg.timeout_s, max_retries=0
        )
        self.system = SYSTEM.format(rubric=rubric_text(cfg.rubric))
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.failures >= MAX_CONNECTION_FAILURES

    async def ask(self, prompt: str) -> str:
        import openai

        if self.down:
            raise RuntimeError("skipped: the judge endpoint failed repeatedly")
        request = self.client.chat.completions.create(
            model=self.cfg.model,
            messages=[{"role": "system", "content": self.system}, {"role": "user", "content": prompt}],
            temperature=0.0,
            max_tokens=self.cfg.max_tokens,
        )
        try:
            reply = await asyncio.wait_for(request, self.cfg.timeout_s)
        except TimeoutError:
            self.failures += 1
            raise RuntimeError(f"timeout: no complete answer within {self.cfg.timeout_s:g} s") from None
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            self.failures += 1
            raise RuntimeError(f"connection: {err}") from None
        except openai.APIError as err:
            raise RuntimeError(f"endpoint error: {err}") from None
        except (
            Exception
        ) as err:  # a malformed reply (cut-off JSON, a body of the wrong shape): this request's
            raise RuntimeError(f"malformed reply: {type(err).__name__}: {err}") from None
        self.failures = 0
        try:
            content = reply.choices[0].message.content
        except (AttributeError, IndexError, TypeError, KeyError):
            raise RuntimeError("malformed reply: it has no message") from None
        if content is not None and not isinstance(content, str):
            raise RuntimeError(f"malformed reply: the message is a {type(content).__name__}, not text")
        return content or ""

    async def close(self) -> None:
        await self.client.close()


def judge_rows(cfg: JudgeConfig, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Verdicts per row (input, reference, tuned, base) and their summary; errors counted, not raised."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_judge_rows(cfg, rows))
    # Called from inside an event loop (a notebook): run ours in a thread of its own.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _judge_rows(cfg, rows)).result()


async def _judge_rows(
    cfg: JudgeConfig, rows: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    endpoint = _Endpoint(cfg)
    rows = rows[: cfg.max_examples] if cfg.max_examples else rows
    verdicts: list[dict[str, Any]] = []
    try:
        for row in rows:
            verdicts.append(await _judge_row(endpoint, cfg, row))
    finally:
        await endpoint.close()
    return summarize_verdicts(verdicts, cfg), verdicts


async def _judge_row(endpoint: _Endpoint, cfg: JudgeConfig, row: dict[str, Any]) -> dict[str, Any]:
    v: dict[str, Any] = {"id": row["id"], "errors": []}
    q, ref = str(row.get("input", "")), str(row.get("reference", ""))

    async def ask(prompt: str, parse: Any) -> Any:
        try:
            text = await endpoint.ask(prompt)
        except RuntimeError as err:
            v["errors"].append(str(err)[:200])
            return None
        value = parse(text)
        if value is None:
            v["errors"].append(f"no verdict in the judge's answer: {text[:120]!r}")
        return value

    if "single" in cfg.modes:
        v["single"] = {}
        for side in ("tuned", "base"):
            if isinstance(row.get(side), str):
                prompt = SINGLE.format(question=q, reference=ref, answer=row[side])
                v["single"][side] = await ask(prompt, parse_rating)
    if "pairwise" in cfg.modes and isinstance(row.get("base"), str):
        first = await ask(
            PAIRWISE.format(question=q, reference=ref, a=row["tuned"], b=row["base"]), parse_choice
        )
        second = await ask(
            PAIRWISE.format(question=q, reference=ref, a=row["base"], b=row["tuned"]), parse_choice
        )
        v["pairwise"] = {"tuned_first": first, "base_first": second, "outcome": _outcome(first, second)}
    return v


def _outcome(tuned_first: str | None, base_first: str | None) -> str | None:
    """Tuned's win/tie/loss from both orders; a verdict that follows the position is a tie."""
    if tuned_first is None or base_first is None:
        return None
    score = {"A": 1, "B": -1, "C": 0}[tuned_first] + {"A": -1, "B": 1, "C": 0}[base_first]
    return "win" if score > 0 else "loss" if score < 0 else "tie"


def summarize_verdicts(verdicts: list[dict[str, Any]], cfg: JudgeConfig) -> dict[str, Any]:
    from tuneforge.evaluation.stats import bootstrap_ci, compare

    out: dict[str, Any] = {
        "model": cfg.model,
        "rubric": cfg.rubric,
        "examples": len(verdicts),
        "examples_with_errors": sum(bool(v["errors"]) for v in verdicts),
        "errors": sum(len(v["errors"]) for v in verdicts),
    }
    first_error = next((v["errors"][0] for v in verdicts if v["errors"]), None)
    if first_error:
        out["first_error"] = first_error
    singles = [v["single"] for v in verdicts if "single" in v]
    for side in ("tuned", "base"):
        scores = [float(s[side]) for s in singles if s.get(side) is not None]
        if scores:
            out[f"single_{side}"] = bootstrap_ci(scores)
    both = [
        (float(s["tuned"]), float(s["base"])) for s in singles if s.get("tuned") is not None and s.get("base")
    ]
    if both:
        c = compare("judge_rating", [t for t, _ in both], [b for _, b in both])
        out["single_paired"] = {**c["paired"], "verdict": c["verdict"]}
    outcomes = [v["pairwise"]["outcome"] for v in verdicts if v.get("pairwise", {}).get("outcome")]
    if outcomes:
        out["pairwise"] = {w: bootstrap_ci([float(o == w) for o in outcomes]) for w in ("win", "tie", "loss")}
        alone_first, alone_second = (
            {"A": "win", "B": "loss", "C": "tie"},
            {"A": "loss", "B": "win", "C": "tie"},
        )
        consistent = sum(
            alone_first[p["tuned_first"]] == alone_second[p["base_first"]]
            for v in verdicts
            if (p := v.get("pairwise", {})).get("outcome")
        )
        out["pairwise"]["order_consistent_rate"] = consistent / len(outcomes)
    return out


def summary_lines(j: dict[str, Any]) -> list[str]:
    """The judge's summary as the terminal prints it: verdicts, failures and position-swap consistency."""
    from tuneforge.evaluation.stats import sig

    def ci(d: dict[str, Any]) -> str:
        return f"{sig(d['value'])} [{sig(d['lo'])}, {sig(d['hi'])}]"

    failed = j.get("examples_with_errors", 0)
    lines = [
        f"judge {j.get('model')} ({j.get('rubric')} rubric): {j.get('examples', 0)} examples, "
        f"{failed} with failures ({j.get('errors', 0)} failed requests or answers without a verdict)"
    ]
    for side in ("tuned", "base"):
        if f"single_{side}" in j:
            lines.append(f"  rating 1-10, {side}: {ci(j[f'single_{side}'])}")
    if "single_paired" in j:
        lines.append(f"  {j['single_paired']['verdict']}")
    pair = j.get("pairwise")
    if pair:
        lines.append(
            "  pairwise, tuned vs base: "
            + ", ".join(f"{w} {ci(pair[w])}" for w in ("win", "tie", "loss"))
            + f"; verdicts that survive swapping the order: {sig(100 * pair['order_consistent_rate'])}%"
        )
    if failed and failed == j.get("examples"):
        lines.append("  every example failed: no judge verdict in this evaluation")
    if j.get("first_error"):
        lines.append(f"  first error: {j['first_error']}")
    return lines
