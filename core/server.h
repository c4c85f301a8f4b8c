// choreo — the nng server: rep, pull, pub and http endpoints.
//
// Every nng call of the daemon lives here. The aio callbacks only decode a
// request (codec.h) and submit jobs to the engine of the request's shard;
// the engine calls back with the reply once it is durable. The TLS
// configurations of the endpoints are made in tls.c.
#ifndef CORE_SERVER_H
#define CORE_SERVER_H

#include <stddef.h>

#include "engine.h"
#include "tls.h"

typedef struct ch_server ch_server;

typedef struct {
	const char *rep_url, *pull_url, *pub_url, *http_url;
	size_t      max_message;  // NNG_OPT_RECVMAXSZ on every listener
	size_t      pub_queue;    // bytes a subscriber may fall behind by
	int         rep_contexts; // concurrent REQ requests served
	int         pull_slots;   // pulled events in flight before pull waits
	ch_engine **engines;      // one per shard
	ch_store  **stores;       // one per shard (for /metrics)
	int         shards;
	const char *version;
	const char *admin_token;  // reload needs it; NULL: none
	ch_tls_files tls;         // for every tls+tcp://, wss://, https:// URL
} ch_server_opts;

// ch_server_start binds every endpoint and starts receiving. Returns CH_OK,
// or CH_EINTERNAL with why filled (which endpoint and the nng error).
int ch_server_start(ch_server **out, const ch_server_opts *o, char *why,
    size_t whylen);

typedef struct ch_reloader ch_reloader;
// ch_server_set_reloader lets the reload op through (refused before).
void ch_server_set_reloader(ch_server *s, ch_reloader *r);

// ch_server_publish sends one pub message (topic \0 msgpack). Thread-safe.
void ch_server_publish(void *srv, const void *msg, size_t len);

// ch_server_quiesce stops taking new requests; replies still go out.
void ch_server_quiesce(ch_server *s);
// ch_server_drain waits (up to ms) for replies in flight to be sent.
void ch_server_drain(ch_server *s, int ms);
void ch_server_close(ch_server *s);

// ch_shard_of maps business \0 customer to a shard (stable FNV-1a hash).
int ch_shard_of(ch_str business, ch_str customer, int shards);

#endif
