// The usage and cost the gateway reports for each call, in the call's trailer `claude-gateway-usage`:
// JSON {"model", "usage", "cost_usd", "partial"} (as claude_gateway.usage reads it in Python). `usage` is the
// Messages API usage object merged over the stream; `cost_usd` is null when the gateway has no price for the
// model; `partial` is true when the call did not end OK. A call the client cancelled has no trailer.
//
//   const usage = usageOf(stream.trailers);   // a MessageStream, once it ended
//   const usage = usageOf(error.metadata);    // a GatewayError

/** The trailer that carries a call's usage and cost. */
export const USAGE_TRAILER = "claude-gateway-usage";

/** One call's usage and cost, as the gateway reported them. */
export interface CallUsage {
  model: string;
  /** The Messages API usage object; absent keys were not reported. */
  usage: { input_tokens?: number; output_tokens?: number; [key: string]: unknown };
  /** USD; null when the gateway has no price for the model (unknown, not zero). */
  cost_usd: number | null;
  /** The call did not end OK: its usage is what the upstream had reported by then. */
  partial: boolean;
}

/** The usage trailer in `metadata` (trailers, or a GatewayError's metadata), or undefined when there is none. */
export function usageOf(metadata: Headers | undefined): CallUsage | undefined {
  const value = metadata?.get(USAGE_TRAILER);
  if (value === null || value === undefined) return undefined;
  const parsed: unknown = JSON.parse(value);
  if (typeof parsed !== "object" || parsed === null || typeof (parsed as { usage?: unknown }).usage !== "object") {
    throw new Error(`${USAGE_TRAILER} is not a usage object: ${value.slice(0, 200)}`);
  }
  const report = parsed as { model?: unknown; usage: CallUsage["usage"]; cost_usd?: unknown; partial?: unknown };
  return {
    model: typeof report.model === "string" ? report.model : "",
    usage: report.usage,
    cost_usd: typeof report.cost_usd === "number" ? report.cost_usd : null,
    partial: report.partial === true,
  };
}
