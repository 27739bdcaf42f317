// The chat page: one prompt, the reply streamed word by word over the browser's Connect (or gRPC-Web)
// transport, usage at the end, a clear message for every failure status, and Stop, which cancels the
// call and so the gateway's upstream request. Served by the gateway at / of its HTTP port.

import { GatewayClient, GatewayError, type MessageStream } from "@claude-gateway/client";
import type { Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";

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
  const prompt = element<HTMLTextAreaElement>("prompt");
  const model = element<HTMLInputElement>("model");
  const token = element<HTMLInputElement>("token");
  const kind = element<HTMLSelectElement>("transport");
  const send = element<HTMLButtonElement>("send");
  const stop = element<HTMLButtonElement>("stop");
  const reply = element<HTMLDivElement>("reply");
  const usage = element<HTMLDivElement>("usage");
  const status = element<HTMLDivElement>("status");
  let current: MessageStream | undefined;

  const show = (state: string, text: string): void => {
    document.body.dataset["state"] = state; // idle, streaming, done, stopped, failed
    status.className = state;
    status.textContent = text;
    status.setAttribute("role", state === "failed" ? "alert" : "status");
    send.disabled = state === "streaming";
    stop.disabled = state !== "streaming";
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (current !== undefined || prompt.value.trim() === "") return;
    reply.textContent = "";
    usage.textContent = "";
    show("streaming", "Streaming…");
    const client = new GatewayClient({ transport: transport(kind.value), token: token.value.trim() || undefined });
    const stream = client.messages.stream({
      model: model.value.trim(),
      max_tokens: 1024,
      messages: [{ role: "user", content: prompt.value }],
    });
    current = stream;
    stream.on("text", (_delta, snapshot) => {
      reply.textContent = snapshot;
    });
    stream.on("finalMessage", (message) => {
      const u = message.usage;
      usage.textContent = `${u.input_tokens} input tokens, ${u.output_tokens} output tokens · stop reason ${message.stop_reason}`;
      show("done", "Done.");
    });
    stream.on("abort", () => show("stopped", "Stopped: the call was cancelled, and with it the request to Claude."));
    stream.on("error", (error) => {
      if (!stream.controller.signal.aborted) show("failed", failureText(error));
    });
    stream.on("end", () => {
      current = undefined;
    });
  });
  stop.addEventListener("click", () => current?.abort());
  show("idle", "Ready.");
}

main();
