// The chat page: a conversation of several turns, each reply streamed word by word over the browser's Connect
// (or gRPC-Web) transport, its usage and cost (from the gateway's usage trailer) under it and the conversation's
// total cost below, a clear message for every failure status, and Stop, which cancels the call and so the
// gateway's upstream request. Served by the gateway at / of its HTTP port.

import { GatewayClient, GatewayError, usageOf, type CallUsage, type MessageStream } from "@claude-gateway/client";
import type { Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";

/** How long the gateway keeps reading a reply whose connection dropped, waiting for the page to resume it. */
export const DETACH_GRACE_SECONDS = 60;

/** What each failure status means for the person at the page, for every status the gateway can end a call with. */
export const ADVICE: Readonly<Record<string, string>> = {
  CANCELLED: "The call was cancelled before the reply was complete.",
  UNKNOWN: "The gateway could not say what went wrong; try again, and look at its log if it repeats.",
  INVALID_ARGUMENT: "The request was refused as it is: change what the fields below name.",
  DEADLINE_EXCEEDED: "The reply took longer than the call's deadline allows.",
  NOT_FOUND: "The gateway or Claude does not know what was asked for (check the model name).",
  ALREADY_EXISTS: "The request conflicts with one already made.",
  PERMISSION_DENIED: "This caller may not make this request.",
  RESOURCE_EXHAUSTED: "A limit was reached (rate, quota or concurrent calls): wait, then try again.",
  FAILED_PRECONDITION: "The request cannot be served in the current state.",
  ABORTED: "The call was aborted; try again.",
  OUT_OF_RANGE: "A value in the request is out of range.",
  UNIMPLEMENTED: "The gateway does not serve this call here.",
  INTERNAL: "Something failed inside the gateway or Claude; try again.",
  UNAVAILABLE: "The gateway or Claude is unavailable or overloaded right now: try again shortly.",
  DATA_LOSS: "Part of the reply was lost.",
  UNAUTHENTICATED: "The gateway needs a caller token: enter it in the token field.",
};

/** The message shown for a failed call: status, what it means, and the gateway's details. */
export function failureText(error: GatewayError): string {
  const lines = [`${error.codeName}: ${error.details}`, ADVICE[error.codeName] ?? ""];
  if (error.errorInfo) lines.push(`reason ${error.errorInfo.reason}${error.requestId ? `, request ${error.requestId}` : ""}`);
  for (const v of error.violations) lines.push(`field ${v.field}: ${v.description}`);
  if (error.retryDelaySeconds !== undefined) lines.push(`retry after ${error.retryDelaySeconds}s`);
  return lines.filter((line) => line !== "").join("\n");
}

/** US dollars, to a millionth below a cent (short replies cost fractions of one), else to a hundredth of a cent. */
export function dollars(amount: number): string {
  return amount === 0 ? "$0" : `$${amount.toFixed(amount < 0.01 ? 6 : 4)}`;
}

/** A reply's usage line: tokens, stop reason, and its cost as the gateway priced it. */
function usageText(report: CallUsage | undefined, stopReason: string | null | undefined): string {
  if (report === undefined) return "no usage report (the call was cancelled)";
  const parts = [`${report.usage.input_tokens ?? 0} input tokens, ${report.usage.output_tokens ?? 0} output tokens`];
  if (stopReason) parts.push(`stop reason ${stopReason}`);
  parts.push(report.cost_usd === null ? `cost unknown (no price for ${report.model})` : `cost ${dollars(report.cost_usd)}`);
  return parts.join(" · ");
}

type Turn = { role: "user" | "assistant"; content: string };

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (found === null) throw new Error(`the page has no #${id}`);
  return found as T;
}

/** The Connect transport (JSON, so the network panel is readable) or gRPC-Web, to this page's origin. */
function transport(kind: string): Transport {
  const baseUrl = window.location.origin;
  return kind === "grpc-web" ? createGrpcWebTransport({ baseUrl }) : createConnectTransport({ baseUrl });
}

function main(): void {
  const form = element<HTMLFormElement>("chat");
  const conversation = element<HTMLDivElement>("conversation");
  const prompt = element<HTMLTextAreaElement>("prompt");
  const model = element<HTMLInputElement>("model");
  const maxTokens = element<HTMLInputElement>("max-tokens");
  const token = element<HTMLInputElement>("token");
  const kind = element<HTMLSelectElement>("transport");
  const send = element<HTMLButtonElement>("send");
  const stop = element<HTMLButtonElement>("stop");
  const fresh = element<HTMLButtonElement>("new");
  const usage = element<HTMLDivElement>("usage");
  const total = element<HTMLDivElement>("total");
  const status = element<HTMLDivElement>("status");
  let current: MessageStream | undefined;
  // The turns sent with the next prompt: each completed (or stopped) exchange, as the person saw it.
  let history: Turn[] = [];
  let spent = 0; // USD over the conversation's priced calls
  let priced = 0;
  let unpriced = 0;

  const show = (state: string, text: string): void => {
    document.body.dataset["state"] = state; // idle, streaming, done, stopped, failed
    status.className = state;
    status.textContent = text;
    status.setAttribute("role", state === "failed" ? "alert" : "status");
    send.disabled = state === "streaming";
    stop.disabled = state !== "streaming";
    fresh.disabled = state === "streaming";
  };

  /** One turn in the conversation's view; the newest reply's text is #reply. */
  const addTurn = (role: Turn["role"], text: string): { box: HTMLDivElement; text: HTMLDivElement; meta: HTMLDivElement } => {
    const box = document.createElement("div");
    box.className = `turn ${role}`;
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    const meta = document.createElement("div");
    meta.className = "meta";
    box.append(body, meta);
    if (role === "assistant") {
      document.getElementById("reply")?.removeAttribute("id");
      body.id = "reply";
    }
    conversation.append(box);
    return { box, text: body, meta };
  };

  /** Adds a call's cost to the conversation's total. */
  const count = (report: CallUsage | undefined): void => {
    if (report === undefined) return;
    if (report.cost_usd === null) unpriced += 1;
    else {
      spent += report.cost_usd;
      priced += 1;
    }
    total.dataset["costUsd"] = String(spent);
    const calls = priced === 1 ? "1 call" : `${priced} calls`;
    total.textContent = `Conversation: ${dollars(spent)} over ${calls}` + (unpriced > 0 ? `, and ${unpriced} without a price` : "");
  };

  const reset = (): void => {
    history = [];
    spent = priced = unpriced = 0;
    conversation.replaceChildren();
    usage.textContent = "";
    total.textContent = "";
    delete total.dataset["costUsd"];
    show("idle", "Ready: a new conversation.");
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const asked = prompt.value;
    if (current !== undefined || asked.trim() === "") return;
    const limit = maxTokens.valueAsNumber;
    if (!Number.isInteger(limit) || limit < 1) {
      show("failed", "max tokens must be a whole number of at least 1.");
      return;
    }
    usage.textContent = "";
    addTurn("user", asked);
    const reply = addTurn("assistant", "");
    reply.box.dataset["state"] = "streaming";
    prompt.value = "";
    show("streaming", "Streaming…");
    const client = new GatewayClient({ transport: transport(kind.value), token: token.value.trim() || undefined });
    // Resumable: a dropped connection (a network change, a proxy that recycles it) is resumed where it was.
    const stream = client.messages.stream(
      { model: model.value.trim(), max_tokens: limit, messages: [...history, { role: "user", content: asked }] },
      { detachGraceSeconds: DETACH_GRACE_SECONDS },
    );
    current = stream;
    const keep = (text: string): void => {
      if (text !== "") history.push({ role: "user", content: asked }, { role: "assistant", content: text });
    };
    const report = (found: CallUsage | undefined, stopReason?: string | null): void => {
      reply.meta.textContent = usageText(found, stopReason);
      usage.textContent = reply.meta.textContent;
      if (found?.cost_usd != null) reply.box.dataset["costUsd"] = String(found.cost_usd);
      count(found);
    };
    stream.on("text", (_delta, snapshot) => {
      reply.text.textContent = snapshot;
      if (status.textContent !== "Streaming…") show("streaming", "Streaming…");
    });
    stream.on("reconnect", (attempt) => show("streaming", `Reconnecting… (attempt ${attempt})`));
    stream.on("finalMessage", (message) => {
      reply.box.dataset["state"] = "done";
      keep(reply.text.textContent ?? "");
      report(usageOf(stream.trailers), message.stop_reason);
      show("done", "Done.");
    });
    stream.on("abort", () => {
      reply.box.dataset["state"] = "stopped";
      keep(reply.text.textContent ?? ""); // what arrived stays in the conversation
      report(undefined);
      show("stopped", "Stopped: the call was cancelled, and with it the request to Claude.");
    });
    stream.on("error", (error) => {
      if (stream.controller.signal.aborted) return;
      reply.box.dataset["state"] = "failed";
      report(usageOf(error.metadata)); // a failed call may still have used (and cost) tokens
      prompt.value = asked; // not part of the conversation: there to send again
      show("failed", failureText(error));
    });
    stream.on("end", () => {
      current = undefined;
    });
  });
  stop.addEventListener("click", () => current?.abort());
  fresh.addEventListener("click", reset);
  show("idle", "Ready.");
}

main();
