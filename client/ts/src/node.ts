// Node: `new Gateway()` reaches the gateway over gRPC (HTTP/2) with @connectrpc/connect-node, as
// `new Anthropic()` reaches the API: target and token from the environment unless given.

import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { GatewayClient } from "./client.js";

export * from "./index.js";

export const DEFAULT_TARGET = "127.0.0.1:50051";
/** The gateway's default GATEWAY_MAX_MESSAGE_BYTES: the largest response message to accept. */
export const MAX_MESSAGE_BYTES = 32 * 1024 * 1024;

export interface NodeGatewayOptions {
  /** host:port of the gateway (default env GATEWAY_TARGET, else 127.0.0.1:50051). */
  target?: string;
  /** Connect with TLS (implied by `ca`); the system's CAs are trusted unless `ca` is given. */
  tls?: boolean;
  /** PEM CA certificate(s) to trust. */
  ca?: string | Buffer;
  /** Caller token (default env GATEWAY_TOKEN), sent as `authorization: Bearer <token>`. */
  token?: string;
  /** Headers sent with every call. */
  headers?: HeadersInit;
  /** Default deadline of each call in milliseconds (default 600000). */
  timeoutMs?: number;
  /** A transport to use instead of the one built from target and TLS. */
  transport?: Transport;
}

/** The gRPC transport to the gateway at `target`. */
export function createGatewayTransport(options: Pick<NodeGatewayOptions, "target" | "tls" | "ca"> = {}): Transport {
  const target = options.target ?? process.env["GATEWAY_TARGET"] ?? DEFAULT_TARGET;
  const tls = options.tls ?? options.ca !== undefined;
  return createGrpcTransport({
    baseUrl: `${tls ? "https" : "http"}://${target}`,
    nodeOptions: options.ca !== undefined ? { ca: options.ca } : undefined,
    readMaxBytes: MAX_MESSAGE_BYTES,
  });
}

/** A client of the gateway over gRPC. */
export class Gateway extends GatewayClient {
  constructor(options: NodeGatewayOptions = {}) {
    super({
      transport: options.transport ?? createGatewayTransport(options),
      token: options.token ?? process.env["GATEWAY_TOKEN"],
      headers: options.headers,
      timeoutMs: options.timeoutMs,
    });
  }
}
