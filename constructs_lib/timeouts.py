"""How long the platform's HTTP connections and calls may stay silent: one place, each value derived from the one before.

The chain (DESIGN: keep-alive and timeouts):
1. LiteLLM gives up on a model call that has stayed silent for `litellm_settings.request_timeout` (litellm/config.yaml;
   checked at synth to be at most LLM_REQUEST_TIMEOUT_SECONDS). Non-streaming calls to large models can be silent for
   minutes while the model writes.
2. The ALB closes a connection idle for ALB_IDLE_TIMEOUT_SECONDS: longer than the longest silent call, so a slow call
   ends with LiteLLM's own timeout error (and stops there), never with an ALB 504 while LiteLLM keeps calling (and
   paying for) the model.
3. Every target keeps idle connections open longer than the ALB does (TARGET_KEEP_ALIVE_SECONDS): otherwise the ALB
   reuses a connection the target has just closed and the caller gets a 502 (which also trips the 5xx alarms that roll
   deployments back). Langfuse web (Next.js standalone) reads KEEP_ALIVE_TIMEOUT in milliseconds, LiteLLM (uvicorn)
   KEEPALIVE_TIMEOUT in seconds; Coder's HTTP server sets no idle timeout (it never closes an idle connection first).
"""

from __future__ import annotations

LLM_REQUEST_TIMEOUT_SECONDS = 600
ALB_IDLE_TIMEOUT_SECONDS = LLM_REQUEST_TIMEOUT_SECONDS + 60
TARGET_KEEP_ALIVE_SECONDS = ALB_IDLE_TIMEOUT_SECONDS + 15

# ALB idle timeouts are 1..4000 s; the chain must stay in order whatever the first value becomes.
assert LLM_REQUEST_TIMEOUT_SECONDS < ALB_IDLE_TIMEOUT_SECONDS < TARGET_KEEP_ALIVE_SECONDS
assert ALB_IDLE_TIMEOUT_SECONDS <= 4000
