// Rebuilds the final message from stream events, as the Anthropic SDKs' stream helpers do (the same
// rules as client/claude_gateway/accumulator.py). Works on the Messages API JSON of each event; tool
// input is parsed from the concatenated input_json_delta pieces, partially while it is incomplete.

import type { ContentBlock, Message, RawMessageStreamEvent } from "@anthropic-ai/sdk/resources/messages";
import { partialParse } from "@anthropic-ai/sdk/_vendor/partial-json-parser/parser";

type Json = Record<string, unknown>;

// message_delta usage counts that, when present, replace the message_start values.
const USAGE_TOTALS = [
  "input_tokens",
  "cache_creation_input_tokens",
  "cache_read_input_tokens",
  "server_tool_use",
  "output_tokens_details",
] as const;
const TRACKS_TOOL_INPUT = new Set(["tool_use", "server_tool_use"]);
const KNOWN = new Set(["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta"]);

/** Feed events in stream order; `message` is the snapshot so far (undefined before message_start). */
export class Accumulator {
  message: Message | undefined;
  readonly #jsonBufs = new Map<number, string>();

  add(event: RawMessageStreamEvent): void {
    if (event.type === "message_start") {
      this.message = structuredClone(event.message);
      return;
    }
    const message = this.message;
    if (message === undefined) {
      if (!KNOWN.has(event.type)) return; // ping, or an event type this client does not know
      throw new Error(`${event.type} before message_start`);
    }
    switch (event.type) {
      case "content_block_start":
        message.content.push(structuredClone(event.content_block) as ContentBlock);
        break;
      case "content_block_delta":
        this.#delta(message.content[event.index] as unknown as Json, event.index, event.delta as unknown as Json);
        break;
      case "message_delta": {
        const delta = event.delta as unknown as Json;
        const target = message as unknown as Json;
        target["stop_reason"] = delta["stop_reason"] ?? null;
        target["stop_sequence"] = delta["stop_sequence"] ?? null;
        target["stop_details"] = delta["stop_details"] ?? null;
        if (delta["container"] !== undefined && delta["container"] !== null) target["container"] = delta["container"];
        const usage = (event.usage ?? {}) as unknown as Json;
        const total = message.usage as unknown as Json;
        total["output_tokens"] = usage["output_tokens"] ?? null;
        for (const key of USAGE_TOTALS) {
          if (usage[key] !== undefined && usage[key] !== null) total[key] = usage[key];
        }
        break;
      }
      default:
        break;
    }
  }

  #delta(block: Json | undefined, index: number, delta: Json): void {
    if (block === undefined) return;
    const kind = delta["type"];
    if (kind === "text_delta" && block["type"] === "text") {
      block["text"] = (block["text"] as string) + (delta["text"] as string);
    } else if (kind === "input_json_delta" && TRACKS_TOOL_INPUT.has(block["type"] as string)) {
      const buf = (this.#jsonBufs.get(index) ?? "") + (delta["partial_json"] as string);
      this.#jsonBufs.set(index, buf);
      if (buf) block["input"] = partialParse(buf);
    } else if (kind === "citations_delta" && block["type"] === "text") {
      const citations = block["citations"] as unknown[] | null | undefined;
      if (citations && citations.length > 0) citations.push(delta["citation"]);
      else block["citations"] = [delta["citation"]];
    } else if (kind === "thinking_delta" && block["type"] === "thinking") {
      block["thinking"] = (block["thinking"] as string) + (delta["thinking"] as string);
    } else if (kind === "signature_delta" && block["type"] === "thinking") {
      block["signature"] = delta["signature"];
    }
  }
}
