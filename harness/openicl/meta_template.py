"""Render chat turns into the exact string a model sees, from the model's meta template.

Semantics follow OpenCompass's ``LMTemplateParser`` (the EEP protocol depends on them):
- each turn renders ``role.begin + prompt + role.end``, with no separators;
- a new round starts whenever a role repeats or goes back to an earlier role, and every role of
  the meta template's round is rendered in each round (with an empty prompt where absent);
- in generation mode the last round stops at the role marked ``generate=True``: only that role's
  ``begin`` is emitted and its prompt is dropped; in PPL mode everything is rendered;
- an extension: that role may carry ``generate_begin``, which opens its turn in the last round (in
  both modes) instead of ``begin``, for chat formats whose answer being produced starts differently
  from earlier answers (Qwen3 without thinking: an empty think block, absent from the history);
- the meta template's ``begin`` is prepended once and its ``end`` appended (PPL mode, or when the
  generation role was never reached).
Without a meta template, turns' prompts are joined with newlines (OpenCompass's default parser).
"""
from __future__ import annotations

from harness.errors import HarnessError


def split_rounds(turns: list[dict], role_order: list[str]) -> list[list[dict]]:
    """Group turns into rounds: a round ends when a role repeats or an earlier role comes back."""
    rounds: list[list[dict]] = []
    last_pos = -1
    for turn in turns:
        pos = role_order.index(turn["role"])
        if not rounds or pos <= last_pos:
            rounds.append([])
        rounds[-1].append(turn)
        last_pos = pos
    return rounds


def render(filled, meta_template: dict | None, mode: str = "gen") -> str:
    """Turn a filled prompt (string or list of turns) into the final prompt string."""
    if mode not in ("gen", "ppl"):
        raise ValueError(f"mode must be 'gen' or 'ppl', got {mode!r}")
    if isinstance(filled, str):
        return filled
    for turn in filled:
        if isinstance(turn, str):
            raise HarnessError(f"unreplaced marker {turn!r} in a round template; is the retriever configured?")
    if not meta_template:
        return "\n".join(t.get("prompt", "") for t in filled if t.get("prompt", ""))

    round_roles = meta_template.get("round", [])
    reserved = {r["role"]: r for r in meta_template.get("reserved_roles", [])}
    role_order = [r["role"] for r in round_roles]
    text = meta_template.get("begin", "")
    # Reserved roles (e.g. SYSTEM) render in place; the other turns form rounds.
    conversation = []
    for turn in filled:
        if turn["role"] in reserved:
            text += _render_turn(reserved[turn["role"]], turn.get("prompt", ""))
        else:
            conversation.append(_with_known_role(turn, role_order))
    rounds = split_rounds(conversation, role_order)
    for i, round_turns in enumerate(rounds):
        prompts = {t["role"]: t.get("prompt", "") for t in round_turns}
        generating = mode == "gen" and i == len(rounds) - 1
        # Every role of the meta template's round is rendered, with an empty prompt if absent.
        for role_cfg in round_roles:
            if i == len(rounds) - 1 and role_cfg.get("generate", False) and "generate_begin" in role_cfg:
                role_cfg = {**role_cfg, "begin": role_cfg["generate_begin"]}
            if generating and role_cfg.get("generate", False):
                return text + role_cfg.get("begin", "")
            text += _render_turn(role_cfg, prompts.get(role_cfg["role"], ""))
    return text + meta_template.get("end", "")


def _render_turn(role_cfg: dict, prompt: str) -> str:
    return role_cfg.get("begin", "") + prompt + role_cfg.get("end", "")


def _with_known_role(turn: dict, role_order: list[str]) -> dict:
    if turn["role"] in role_order:
        return turn
    fallback = turn.get("fallback_role")
    if fallback in role_order:
        return {**turn, "role": fallback}
    raise HarnessError(
        f"role {turn['role']!r} is not in the model's meta template (roles: {role_order}); "
        "use one of those roles or give the turn a fallback_role"
    )
