// choreo — the nng server. See server.h.
#include "server.h"

#include <nng/nng.h>
#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/pubsub0/pub.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/supplemental/http/http.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "reload.h"
#include "../lua/rules.h"
#include "log.h"
#include "metrics.h"

typedef struct rep_work rep_work;
typedef struct pull_slot pull_slot;

struct ch_server {
	ch_server_opts   o;
	nng_socket       rep, pull, pub;
	bool             rep_open, pull_open, pub_open;
	nng_http_server *http;
	nng_url         *http_url;
	nng_tls_config  *tls;     // shared by every TLS listener; NULL: none
	rep_work        *works;
	int              nworks;
	// pull: a fixed pool of slots; when all are busy, receiving pauses
	// until the engine frees one (back-pressure instead of drops).
	pull_slot       *slots;
	pull_slot       *free_slots;
	nng_aio         *pull_aio;
	pthread_mutex_t  pull_mu;
	bool             pull_paused;
	atomic_bool      stopping;
	atomic_int       inflight;
	ch_reloader     *_Atomic reloader;
	// replies the engine finished, sent by the sender thread
	pthread_t        sender;
	bool             sender_on, sender_stop;
	pthread_mutex_t  smu;
	pthread_cond_t   scv;
	rep_work        *shead, *stail;
	// pub: the sizes of the last PUB_RING messages, and how many of the
	// newest ones a subscriber's queue may hold (pub_fit)
	pthread_mutex_t  pubmu;
	uint32_t        *pub_sizes;
	uint64_t         pub_count;
	size_t           pub_win, pub_sum;
};

#define PUB_RING 8192 // nng's most per subscriber

static ch_server *the_server; // for the HTTP handlers, which get no argument

/*
** {======================================================
** Routing
** =======================================================
*/

int
ch_shard_of(ch_str business, ch_str customer, int shards)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (uint32_t i = 0; i < business.n; i++) {
		h = (h ^ (uint8_t) business.p[i]) * 0x100000001b3ull;
	}
	h = (h ^ 0) * 0x100000001b3ull;
	for (uint32_t i = 0; i < customer.n; i++) {
		h = (h ^ (uint8_t) customer.p[i]) * 0x100000001b3ull;
	}
	return ((int) (h % (uint64_t) shards));
}

static void
pack_error_buf(msgpack_sbuffer *b, int err, const char *msg)
{
	msgpack_packer pk;
	b->size = 0;
	msgpack_packer_init(&pk, b, msgpack_sbuffer_write);
	ch_pack_error(&pk, err, msg);
}

/* }====================================================== */

/*
** {======================================================
** rep: request → exactly one reply
** =======================================================
*/

enum { W_RECV, W_SEND };

struct rep_work {
	ch_server  *srv;
	nng_aio    *aio;
	nng_ctx     ctx;
	int         state;
	nng_msg    *msg;   // the request; the decoded doc points into it
	ch_doc      doc;
	bool        has_doc;
	ch_job      job;   // a single-job request
	ch_job     *subs;  // a fanned-out request (batch, reload)
	uint32_t    nsubs;
	atomic_uint pending;
	_Atomic size_t budget; // a batch's reply: bytes its members may share
	msgpack_sbuffer out;
	ch_req      rules_req; // a reload answers with the rules it loaded
	rep_work   *snext;     // the sender's queue
	bool        sfan;      // send the fanned-out results, not job.reply
};

static void
rep_send(rep_work *w, const void *data, size_t len)
{
	nng_msg *m;
	if (nng_msg_alloc(&m, len) != 0) {
		ch_log_error("server: out of memory for a reply");
		nng_msg_free(w->msg);
		w->msg   = NULL;
		w->state = W_SEND;
		nng_aio_finish(w->aio, NNG_ENOMEM);
		return;
	}
	memcpy(nng_msg_body(m), data, len);
	w->state = W_SEND;
	nng_aio_set_msg(w->aio, m);
	nng_ctx_send(w->ctx, w->aio);
}

static void
rep_send_error(rep_work *w, int err, const char *msg)
{
	CH_COUNT(errors[ch_err_index(err)], 1);
	pack_error_buf(&w->out, err, msg);
	rep_send(w, w->out.data, w->out.size);
}

// The engine thread finishes a batch's jobs one after the other; sending
// each reply from there would take nng's socket lock and wake nng's threads
// once per reply on the thread everything waits for. It queues them for
// the sender thread instead, which sends them as one run.
static void
enqueue_reply(rep_work *w, bool fan)
{
	ch_server *s = w->srv;
	w->snext     = NULL;
	w->sfan      = fan;
	pthread_mutex_lock(&s->smu);
	bool was_empty = s->shead == NULL;
	if (s->stail != NULL) {
		s->stail->snext = w;
	} else {
		s->shead = w;
	}
	s->stail = w;
	pthread_mutex_unlock(&s->smu);
	if (was_empty) {
		pthread_cond_signal(&s->scv);
	}
}

static void fan_complete(rep_work *w);

static void *
sender_main(void *arg)
{
	ch_server *s = arg;
	pthread_setname_np(pthread_self(), "choreo:send");
	pthread_mutex_lock(&s->smu);
	for (;;) {
		while (s->shead == NULL && !s->sender_stop) {
			pthread_cond_wait(&s->scv, &s->smu);
		}
		if (s->shead == NULL) {
			break; // stopping, and nothing left to send
		}
		rep_work *w = s->shead;
		s->shead = s->stail = NULL;
		pthread_mutex_unlock(&s->smu);
		while (w != NULL) {
			rep_work *next = w->snext; // w may be reused once sent
			if (w->sfan) {
				fan_complete(w);
			} else {
				rep_send(w, w->job.reply.data, w->job.reply.size);
			}
			w = next;
		}
		pthread_mutex_lock(&s->smu);
	}
	pthread_mutex_unlock(&s->smu);
	return (NULL);
}

static void
rep_single_done(ch_job *j)
{
	enqueue_reply(j->owner, false);
}

// fan_complete sends a batch's results, in order, once every member is
// done.
static void
fan_complete(rep_work *w)
{
	msgpack_packer pk;
	w->out.size = 0;
	msgpack_packer_init(&pk, &w->out, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 2);
	ch_pack_str(&pk, "ok");
	msgpack_pack_true(&pk);
	ch_pack_str(&pk, "results");
	msgpack_pack_array(&pk, w->nsubs);
	for (uint32_t i = 0; i < w->nsubs; i++) {
		msgpack_sbuffer_write(&w->out, w->subs[i].reply.data,
		    w->subs[i].reply.size);
	}
	rep_send(w, w->out.data, w->out.size);
}

static void
fan_done(ch_job *j)
{
	rep_work *w = j->owner;
	if (atomic_fetch_sub(&w->pending, 1) == 1) {
		enqueue_reply(w, true);
	}
}

static void
fan_out(rep_work *w)
{
	ch_server *s = w->srv;
	ch_req    *r = &w->doc.req;
	uint32_t   n = r->nevents;

	if (n == 0) { // an empty batch
		msgpack_packer pk;
		w->out.size = 0;
		msgpack_packer_init(&pk, &w->out, msgpack_sbuffer_write);
		msgpack_pack_map(&pk, 2);
		ch_pack_str(&pk, "ok");
		msgpack_pack_true(&pk);
		ch_pack_str(&pk, "results");
		msgpack_pack_array(&pk, 0);
		rep_send(w, w->out.data, w->out.size);
		return;
	}
	// the batch's reply is one message: it must fit --max-message with
	// room set aside for every member's own error
	size_t floor = CH_BATCH_REPLY_HEAD + (size_t) n * CH_REPLY_RESERVE;
	if (s->o.max_message > 0 && s->o.max_message < floor) {
		char m[200];
		snprintf(m, sizeof(m),
		    "a batch of %u events may need a reply of %zu bytes, more "
		    "than a message may hold (--max-message): send fewer events "
		    "per batch (nothing applied)",
		    n, floor);
		rep_send_error(w, CH_EREPLYTOOLARGE, m);
		return;
	}
	atomic_store(&w->budget, s->o.max_message > 0
	        ? s->o.max_message - floor
	        : SIZE_MAX);
	w->subs = calloc(n, sizeof(ch_job));
	if (w->subs == NULL) {
		rep_send_error(w, CH_EINTERNAL, "out of memory");
		return;
	}
	w->nsubs = n;
	atomic_store(&w->pending, n + 1); // +1: our own hold until all queued
	for (uint32_t i = 0; i < n; i++) {
		ch_job *j = &w->subs[i];
		ch_job_init(j);
		j->owner = w;
		j->index = i;
		j->done  = fan_done;
		j->req   = &r->events[i];
		j->reply_budget = &w->budget;
		if (r->events[i].err != CH_OK) {
			const char *m = r->events[i].errmsg;
			pack_error_buf(&j->reply, r->events[i].err,
			    m ? m : "bad request");
			if (!ch_job_reply_fits(j)) {
				ch_job_reply_too_large(j, "this member's error",
				    j->reply.size, false);
			}
			CH_COUNT(errors[ch_err_index(r->events[i].err)], 1);
			fan_done(j);
			continue;
		}
		CH_COUNT(requests[CH_OP_EVENT], 1);
		int shard = ch_shard_of(r->events[i].business,
		    r->events[i].customer, s->o.shards);
		if (ch_engine_submit(s->o.engines[shard], j, false) != CH_OK) {
			pack_error_buf(&j->reply, CH_EOVERLOADED,
			    "the queue is full; retry later (nothing applied)");
			CH_COUNT(errors[ch_err_index(CH_EOVERLOADED)], 1);
			fan_done(j);
		}
	}
	if (atomic_fetch_sub(&w->pending, 1) == 1) { // release our hold
		fan_complete(w);
	}
}

// reload_done runs on the reloader's thread once every engine has swapped:
// the reply is the rules op's, from shard 0.
static void
reload_done(void *arg, int rc, const char *why)
{
	rep_work  *w = arg;
	ch_server *s = w->srv;
	if (rc != CH_OK) {
		rep_send_error(w, rc, why);
		return;
	}
	memset(&w->rules_req, 0, sizeof(w->rules_req));
	w->rules_req.op       = CH_OP_RULES;
	w->rules_req.business = w->doc.req.business;
	w->job.req            = &w->rules_req;
	w->job.owner          = w;
	w->job.done           = rep_single_done;
	w->job.reply_limit    = s->o.max_message;
	if (ch_engine_submit(s->o.engines[0], &w->job, true) != CH_OK) {
		rep_send_error(w, CH_EOVERLOADED,
		    "the server is stopping; the reload may not have happened");
	}
}

void
ch_server_set_reloader(ch_server *s, ch_reloader *r)
{
	atomic_store(&s->reloader, r);
}

static void
rep_cleanup(rep_work *w)
{
	for (uint32_t i = 0; i < w->nsubs; i++) {
		ch_job_fini(&w->subs[i]);
	}
	free(w->subs);
	w->subs  = NULL;
	w->nsubs = 0;
	if (w->has_doc) {
		ch_doc_fini(&w->doc);
		w->has_doc = false;
	}
	if (w->msg != NULL) {
		nng_msg_free(w->msg);
		w->msg = NULL;
	}
	w->job.reply.size = 0;
	w->job.emits.size = 0;
	// 256 contexts each keeping its largest reply held a gigabyte after
	// a few hundred gets of a 4 MiB customer
	ch_sbuffer_trim(&w->job.reply, CH_SBUFFER_KEEP);
	ch_sbuffer_trim(&w->job.emits, CH_SBUFFER_KEEP);
	ch_sbuffer_trim(&w->out, CH_SBUFFER_KEEP);
}

static void
rep_handle(rep_work *w)
{
	ch_server *s   = w->srv;
	w->msg         = nng_aio_get_msg(w->aio);
	w->has_doc     = true;
	atomic_fetch_add(&s->inflight, 1);
	int rc = ch_doc_decode(&w->doc, nng_msg_body(w->msg),
	    nng_msg_len(w->msg));
	if (rc != CH_OK) {
		rep_send_error(w, rc, w->doc.errmsg);
		return;
	}
	ch_req *r = &w->doc.req;
	CH_COUNT(requests[r->op], 1);
	if (atomic_load(&s->stopping)) {
		rep_send_error(w, CH_EOVERLOADED,
		    "the server is stopping; retry later (nothing applied)");
		return;
	}
	switch (r->op) {
	case CH_OP_PING: {
		msgpack_packer pk;
		w->out.size = 0;
		msgpack_packer_init(&pk, &w->out, msgpack_sbuffer_write);
		msgpack_pack_map(&pk, 2);
		ch_pack_str(&pk, "ok");
		msgpack_pack_true(&pk);
		ch_pack_kv_str(&pk, "version", s->o.version);
		rep_send(w, w->out.data, w->out.size);
		return;
	}
	case CH_OP_BATCH:
		fan_out(w);
		return;
	case CH_OP_RELOAD:
	case CH_OP_ROLLBACK: {
		ch_reloader *rl = atomic_load(&s->reloader);
		if (s->o.admin_token != NULL &&
		    !ch_token_ok(s->o.admin_token, r->token)) {
			rep_send_error(w, CH_EUNAUTHORIZED,
			    "reload and rollback need the admin token (field "
			    "'token')");
			return;
		}
		char biz[65], ver[65];
		snprintf(biz, sizeof(biz), "%.*s", (int) r->business.n,
		    r->business.p);
		snprintf(ver, sizeof(ver), "%.*s", (int) r->version.n,
		    r->version.p);
		bool rb = r->op == CH_OP_ROLLBACK;
		if (rl == NULL ||
		    ch_reloader_request(rl, rb ? biz : NULL, rb ? ver : NULL,
		        reload_done, w) != CH_OK) {
			rep_send_error(w, CH_EOVERLOADED,
			    "a reload cannot be taken now; retry later");
		}
		return;
	}
	default:
		break;
	}
	int shard = 0;
	if (r->customer.n > 0) {
		shard = ch_shard_of(r->business, r->customer, s->o.shards);
	}
	w->job.req         = r;
	w->job.owner       = w;
	w->job.done        = rep_single_done;
	w->job.reply_limit = s->o.max_message;
	if (ch_engine_submit(s->o.engines[shard], &w->job, false) != CH_OK) {
		rep_send_error(w, CH_EOVERLOADED,
		    "the queue is full; retry later (nothing applied)");
	}
}

static void
rep_cb(void *arg)
{
	rep_work  *w = arg;
	ch_server *s = w->srv;
	int        rv = nng_aio_result(w->aio);

	switch (w->state) {
	case W_RECV:
		if (rv != 0) {
			if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) {
				return;
			}
			nng_ctx_recv(w->ctx, w->aio);
			return;
		}
		rep_handle(w);
		return;
	case W_SEND:
		if (rv != 0) {
			nng_msg *m = nng_aio_get_msg(w->aio);
			if (m != NULL) {
				nng_msg_free(m);
			}
		}
		rep_cleanup(w);
		atomic_fetch_sub(&s->inflight, 1);
		if (rv == NNG_ECLOSED) {
			return;
		}
		w->state = W_RECV;
		if (!atomic_load(&s->stopping)) {
			nng_ctx_recv(w->ctx, w->aio);
		}
		return;
	}
}

/* }====================================================== */

/*
** {======================================================
** pull: events without replies; decisions go out on pub
** =======================================================
*/

struct pull_slot {
	pull_slot *next_free;
	ch_server *srv;
	nng_msg   *msg;
	ch_doc     doc;
	ch_job     job;
};

static void pull_arm(ch_server *s);

static void
pull_release(ch_server *s, pull_slot *p)
{
	ch_doc_fini(&p->doc);
	nng_msg_free(p->msg);
	p->msg = NULL;
	ch_sbuffer_trim(&p->job.reply, CH_SBUFFER_KEEP);
	ch_sbuffer_trim(&p->job.emits, CH_SBUFFER_KEEP);
	pthread_mutex_lock(&s->pull_mu);
	p->next_free  = s->free_slots;
	s->free_slots = p;
	bool resume   = s->pull_paused;
	s->pull_paused = false;
	pthread_mutex_unlock(&s->pull_mu);
	if (resume && !atomic_load(&s->stopping)) {
		pull_arm(s);
	}
}

static void
pull_done(ch_job *j)
{
	pull_slot *p = j->owner;
	ch_server *s = p->srv;
	ch_req    *r = &p->doc.req;
	if (j->err != CH_OK) {
		CH_COUNT(pull_failed, 1);
		ch_log_warn("pull: event '%.*s' of customer '%.*s' failed: %s",
		    (int) r->type.n, r->type.p, (int) r->customer.n,
		    r->customer.p, ch_err_code(j->err));
	} else {
		// topic \0 the reply, with the event's identity added
		msgpack_sbuffer b;
		msgpack_packer  pk;
		msgpack_sbuffer_init(&b);
		char topic[128];
		int  tl = snprintf(topic, sizeof(topic), "choreo/%.*s/decision",
		     (int) r->business.n, r->business.p);
		msgpack_sbuffer_write(&b, topic, (size_t) tl + 1);
		uint32_t extra = 3 + (r->id.n > 0);
		if (ch_mp_map_reheader(&b, j->reply.data, j->reply.size,
		        extra) == CH_OK) {
			msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
			ch_pack_str(&pk, "business");
			ch_pack_strn(&pk, r->business.p, r->business.n);
			ch_pack_str(&pk, "customer");
			ch_pack_strn(&pk, r->customer.p, r->customer.n);
			ch_pack_str(&pk, "type");
			ch_pack_strn(&pk, r->type.p, r->type.n);
			if (r->id.n > 0) {
				ch_pack_str(&pk, "id");
				ch_pack_strn(&pk, r->id.p, r->id.n);
			}
			ch_server_publish(s, b.data, b.size);
		}
		msgpack_sbuffer_destroy(&b);
	}
	pull_release(s, p);
}

static void
pull_cb(void *arg)
{
	ch_server *s  = arg;
	int        rv = nng_aio_result(s->pull_aio);
	if (rv != 0) {
		if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) {
			return;
		}
		pull_arm(s);
		return;
	}
	nng_msg *m = nng_aio_get_msg(s->pull_aio);
	pthread_mutex_lock(&s->pull_mu);
	pull_slot *p  = s->free_slots;
	s->free_slots = p->next_free; // pull_arm made sure one is free
	pthread_mutex_unlock(&s->pull_mu);
	p->msg = m;
	int rc = ch_doc_decode(&p->doc, nng_msg_body(m), nng_msg_len(m));
	if (rc == CH_OK && p->doc.req.op != CH_OP_EVENT) {
		rc = CH_EBADREQ;
		snprintf(p->doc.errmsg, sizeof(p->doc.errmsg),
		    "pull takes event requests only, got op '%s'",
		    ch_op_name(p->doc.req.op));
	}
	if (rc != CH_OK) {
		CH_COUNT(pull_malformed, 1);
		ch_log_warn("pull: dropped a malformed message: %s",
		    p->doc.errmsg);
		pull_release(s, p);
		pull_arm(s);
		return;
	}
	CH_COUNT(requests[CH_OP_EVENT], 1);
	ch_req *r   = &p->doc.req;
	int     shard = ch_shard_of(r->business, r->customer, s->o.shards);
	p->job.req   = r;
	p->job.owner = p;
	p->job.done  = pull_done;
	p->job.err   = CH_OK;
	// the decision goes out on pub with the topic and the event's
	// identity added (at most 1 KiB): it too must fit --max-message
	p->job.reply_limit = s->o.max_message > 2048
	    ? s->o.max_message - 1024
	    : s->o.max_message / 2;
	if (ch_engine_submit(s->o.engines[shard], &p->job, true) != CH_OK) {
		CH_COUNT(pull_failed, 1);
		pull_release(s, p);
	}
	pull_arm(s);
}

// pull_arm starts the next receive when a slot is free, else pauses.
static void
pull_arm(ch_server *s)
{
	pthread_mutex_lock(&s->pull_mu);
	if (s->free_slots == NULL) {
		s->pull_paused = true;
		pthread_mutex_unlock(&s->pull_mu);
		return;
	}
	pthread_mutex_unlock(&s->pull_mu);
	if (!atomic_load(&s->stopping)) {
		nng_recv_aio(s->pull, s->pull_aio);
	}
}

/* }====================================================== */

/*
** {======================================================
** pub and http
** =======================================================
*/

// pub_fit keeps what a slow subscriber can hold within --pub-queue bytes.
// nng's pub queues messages per subscriber by count (NNG_OPT_SENDBUF, at
// most 8192) and shares each message between the queues, so a queue that
// falls behind holds about the newest SENDBUF messages published: the
// count is set so that the newest SENDBUF messages add up to the budget.
// It shrinks as soon as they would not fit (to 3/4 of the budget, so that
// the next large message does not resize the queues again), and grows
// back, doubling, once twice as many would take half the budget. Called
// with pubmu held, after len was published.
static void
pub_fit(ch_server *s, size_t len)
{
	uint32_t *ring = s->pub_sizes;
	size_t    want = s->pub_win;
	// the oldest of the window leaves it: read before its slot is reused
	// (with the window as large as the ring, it is the very same slot)
	if (s->pub_count >= s->pub_win) {
		s->pub_sum -= ring[(s->pub_count - s->pub_win) % PUB_RING];
	}
	uint32_t sz = (uint32_t) (len > UINT32_MAX ? UINT32_MAX : len);
	ring[s->pub_count % PUB_RING] = sz;
	s->pub_count++;
	s->pub_sum += sz; // what leaves the window later is what came in
	if (s->pub_sum > s->o.pub_queue) {
		while (want > 1 && s->pub_sum > s->o.pub_queue / 4 * 3) {
			size_t oldest = (size_t) (s->pub_count - want) % PUB_RING;
			s->pub_sum -= ring[oldest];
			want--;
		}
	} else if (s->pub_win < PUB_RING && (s->pub_count & 1023) == 0) {
		size_t w2  = s->pub_win * 2 > PUB_RING ? PUB_RING : s->pub_win * 2;
		size_t sum = s->pub_sum;
		for (size_t k = s->pub_win; k < w2 && k < s->pub_count; k++) {
			sum += ring[(size_t) (s->pub_count - 1 - k) % PUB_RING];
		}
		if (sum <= s->o.pub_queue / 2) {
			want       = w2;
			s->pub_sum = sum;
		}
	}
	if (want != s->pub_win) {
		s->pub_win = want;
		nng_socket_set_int(s->pub, NNG_OPT_SENDBUF, (int) want);
	}
}

void
ch_server_publish(void *srv, const void *msg, size_t len)
{
	ch_server *s = srv;
	if (s == NULL || !s->pub_open) {
		return;
	}
	pthread_mutex_lock(&s->pubmu);
	if (nng_send(s->pub, (void *) msg, len, NNG_FLAG_NONBLOCK) == 0) {
		CH_COUNT(published, 1);
		pub_fit(s, len);
	}
	pthread_mutex_unlock(&s->pubmu);
}

static void
http_reply(nng_aio *aio, const char *type, const char *body, size_t len)
{
	nng_http_res *res;
	if (nng_http_res_alloc(&res) != 0) {
		nng_aio_finish(aio, NNG_ENOMEM);
		return;
	}
	nng_http_res_set_header(res, "Content-Type", type);
	nng_http_res_copy_data(res, body, len);
	nng_aio_set_output(aio, 0, res);
	nng_aio_finish(aio, 0);
}

static void
http_metrics(nng_aio *aio)
{
	ch_server *s   = the_server;
	size_t     cap = 64 * 1024, map = 0;
	char      *buf = malloc(cap);
	if (buf == NULL) {
		nng_aio_finish(aio, NNG_ENOMEM);
		return;
	}
	for (int i = 0; s != NULL && i < s->o.shards; i++) {
		map += ch_store_map_size(s->o.stores[i]);
	}
	size_t n = ch_metrics_render(buf, cap, s ? s->o.shards : 0, map);
	http_reply(aio, "text/plain; version=0.0.4; charset=utf-8", buf, n);
	free(buf);
}

static void
http_healthz(nng_aio *aio)
{
	ch_server *s = the_server;
	if (s != NULL && atomic_load(&s->stopping)) {
		http_reply(aio, "text/plain", "stopping\n", 9);
		return;
	}
	http_reply(aio, "text/plain", "ok\n", 3);
}

static int
http_start(ch_server *s, char *why, size_t whylen)
{
	int               rv;
	nng_http_handler *h;
	if ((rv = nng_url_parse(&s->http_url, s->o.http_url)) != 0 ||
	    (rv = nng_http_server_hold(&s->http, s->http_url)) != 0 ||
	    (ch_tls_url(s->o.http_url) &&
	        (rv = nng_http_server_set_tls(s->http, s->tls)) != 0)) {
		snprintf(why, whylen, "http %s: %s", s->o.http_url,
		    nng_strerror(rv));
		return (CH_EINTERNAL);
	}
	if ((rv = nng_http_handler_alloc(&h, "/metrics", http_metrics)) != 0 ||
	    (rv = nng_http_server_add_handler(s->http, h)) != 0 ||
	    (rv = nng_http_handler_alloc(&h, "/healthz", http_healthz)) != 0 ||
	    (rv = nng_http_server_add_handler(s->http, h)) != 0 ||
	    (rv = nng_http_server_start(s->http)) != 0) {
		snprintf(why, whylen, "http %s: %s", s->o.http_url,
		    nng_strerror(rv));
		return (CH_EINTERNAL);
	}
	return (CH_OK);
}

/* }====================================================== */

// tls_start makes the one TLS configuration of every TLS endpoint.
static int
tls_start(ch_server *s, char *why, size_t whylen)
{
	const ch_server_opts *o = &s->o;
	if (!ch_tls_url(o->rep_url) && !ch_tls_url(o->pull_url) &&
	    !ch_tls_url(o->pub_url) && !ch_tls_url(o->http_url)) {
		return (CH_OK);
	}
	if (ch_tls_config(&s->tls, &o->tls, true, NULL, why, whylen) != CH_OK) {
		return (CH_EINTERNAL);
	}
	char cert[512];
	ch_tls_describe(o->tls.cert, cert, sizeof(cert));
	ch_log_info("serve: TLS with %s; %s", cert,
	    o->tls.ca != NULL ? "clients must present a certificate signed "
	                        "by the CA in --tls-ca"
	                      : "no client certificates asked for");
	// nanomsg/nng#1518, not fixed in 1.5.2: see docs/security.md
	const char *names[] = { "rep", "pull", "pub" };
	const char *urls[]  = { o->rep_url, o->pull_url, o->pub_url };
	char        list[32] = "";
	for (int i = 0; i < 3; i++) {
		if (strncmp(urls[i], "tls+tcp", 7) == 0) {
			size_t n = strlen(list);
			snprintf(list + n, sizeof(list) - n, "%s%s", n ? ", " : "",
			    names[i]);
		}
	}
	if (list[0] != '\0') {
		ch_log_warn("serve: a client that abandons a TLS handshake can "
		            "stop nng 1.5.2 from accepting on a tls+tcp:// "
		            "endpoint (here: %s); wss:// is not affected "
		            "(docs/security.md)",
		    list);
	}
	return (CH_OK);
}

// listen_on: RECVMAXSZ on every listener, and the TLS configuration on a
// tls+tcp:// or wss:// one, before it starts.
static int
listen_on(nng_socket sock, const char *what, const char *url, size_t maxsz,
    nng_tls_config *tls, char *why, size_t whylen)
{
	nng_listener l;
	int          rv;
	if ((rv = nng_listener_create(&l, sock, url)) != 0 ||
	    (rv = nng_listener_set_size(l, NNG_OPT_RECVMAXSZ, maxsz)) != 0 ||
	    (ch_tls_url(url) &&
	        (rv = nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, tls)) != 0) ||
	    (rv = nng_listener_start(l, 0)) != 0) {
		snprintf(why, whylen, "%s %s: %s", what, url, nng_strerror(rv));
		return (CH_EINTERNAL);
	}
	return (CH_OK);
}

int
ch_server_start(ch_server **out, const ch_server_opts *o, char *why,
    size_t whylen)
{
	ch_server *s = calloc(1, sizeof(*s));
	int        rv;
	if (s == NULL) {
		snprintf(why, whylen, "out of memory");
		return (CH_EINTERNAL);
	}
	s->o = *o;
	if (s->o.rep_contexts <= 0) {
		s->o.rep_contexts = 256;
	}
	if (s->o.pull_slots <= 0) {
		s->o.pull_slots = 1024;
	}
	pthread_mutex_init(&s->pull_mu, NULL);
	pthread_mutex_init(&s->pubmu, NULL);
	pthread_mutex_init(&s->smu, NULL);
	pthread_cond_init(&s->scv, NULL);
	if (s->o.pub_queue == 0) {
		s->o.pub_queue = (size_t) 32 << 20;
	}
	s->pub_win   = PUB_RING;
	s->pub_sizes = calloc(PUB_RING, sizeof(uint32_t));
	if (s->pub_sizes == NULL) {
		snprintf(why, whylen, "out of memory");
		goto fail;
	}
	if (pthread_create(&s->sender, NULL, sender_main, s) != 0) {
		snprintf(why, whylen, "cannot start the reply thread");
		goto fail;
	}
	s->sender_on = true;
	the_server = s;
	if (tls_start(s, why, whylen) != CH_OK) {
		goto fail;
	}

	// pub first: the engines may publish as soon as anything arrives
	if ((rv = nng_pub0_open(&s->pub)) != 0) {
		snprintf(why, whylen, "pub: %s", nng_strerror(rv));
		goto fail;
	}
	s->pub_open = true;
	// nng's default queue per subscriber is 16 messages: a subscriber a
	// moment slow would lose decisions at a few thousand a second. The
	// most nng takes, until pub_fit finds them over --pub-queue bytes.
	nng_socket_set_int(s->pub, NNG_OPT_SENDBUF, PUB_RING);
	if (listen_on(s->pub, "pub", o->pub_url, o->max_message, s->tls,
	        why, whylen) != CH_OK) {
		goto fail;
	}

	if ((rv = nng_rep0_open(&s->rep)) != 0) {
		snprintf(why, whylen, "rep: %s", nng_strerror(rv));
		goto fail;
	}
	s->rep_open = true;
	nng_socket_set_size(s->rep, NNG_OPT_RECVMAXSZ, o->max_message);
	if (listen_on(s->rep, "rep", o->rep_url, o->max_message, s->tls,
	        why, whylen) != CH_OK) {
		goto fail;
	}
	if ((rv = nng_pull0_open(&s->pull)) != 0) {
		snprintf(why, whylen, "pull: %s", nng_strerror(rv));
		goto fail;
	}
	s->pull_open = true;
	nng_socket_set_size(s->pull, NNG_OPT_RECVMAXSZ, o->max_message);
	if (listen_on(s->pull, "pull", o->pull_url, o->max_message, s->tls,
	        why, whylen) != CH_OK) {
		goto fail;
	}
	if (http_start(s, why, whylen) != CH_OK) {
		goto fail;
	}

	s->works  = calloc((size_t) s->o.rep_contexts, sizeof(rep_work));
	s->slots  = calloc((size_t) s->o.pull_slots, sizeof(pull_slot));
	if (s->works == NULL || s->slots == NULL) {
		snprintf(why, whylen, "out of memory");
		goto fail;
	}
	for (int i = 0; i < s->o.pull_slots; i++) {
		s->slots[i].srv       = s;
		s->slots[i].next_free = s->free_slots;
		ch_job_init(&s->slots[i].job);
		s->free_slots = &s->slots[i];
	}
	if ((rv = nng_aio_alloc(&s->pull_aio, pull_cb, s)) != 0) {
		snprintf(why, whylen, "pull: %s", nng_strerror(rv));
		goto fail;
	}
	for (int i = 0; i < s->o.rep_contexts; i++) {
		rep_work *w = &s->works[i];
		w->srv      = s;
		ch_job_init(&w->job);
		msgpack_sbuffer_init(&w->out);
		if ((rv = nng_aio_alloc(&w->aio, rep_cb, w)) != 0 ||
		    (rv = nng_ctx_open(&w->ctx, s->rep)) != 0) {
			snprintf(why, whylen, "rep: %s", nng_strerror(rv));
			goto fail;
		}
		s->nworks++;
	}
	for (int i = 0; i < s->nworks; i++) {
		s->works[i].state = W_RECV;
		nng_ctx_recv(s->works[i].ctx, s->works[i].aio);
	}
	pull_arm(s);
	*out = s;
	return (CH_OK);
fail:
	ch_server_close(s);
	return (CH_EINTERNAL);
}

void
ch_server_quiesce(ch_server *s)
{
	atomic_store(&s->stopping, true);
}

void
ch_server_drain(ch_server *s, int ms)
{
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	for (int waited = 0; waited < ms && atomic_load(&s->inflight) > 0;
	     waited += 10) {
		nanosleep(&ts, NULL);
	}
}

void
ch_server_close(ch_server *s)
{
	if (s == NULL) {
		return;
	}
	atomic_store(&s->stopping, true);
	if (s->sender_on) {
		// the engines have stopped: send what they finished, then stop
		pthread_mutex_lock(&s->smu);
		s->sender_stop = true;
		pthread_mutex_unlock(&s->smu);
		pthread_cond_signal(&s->scv);
		pthread_join(s->sender, NULL);
		s->sender_on = false;
	}
	if (s->http != NULL) {
		nng_http_server_stop(s->http);
		nng_http_server_release(s->http);
	}
	if (s->http_url != NULL) {
		nng_url_free(s->http_url);
	}
	// Stop every aio before closing the sockets: closing first races a
	// callback that is re-arming a receive on a context being torn down,
	// and nng_close can then wait forever (seen under load on SIGTERM).
	for (int i = 0; i < s->nworks; i++) {
		nng_aio_stop(s->works[i].aio);
	}
	if (s->pull_aio != NULL) {
		nng_aio_stop(s->pull_aio);
	}
	if (s->rep_open) {
		nng_close(s->rep);
	}
	if (s->pull_open) {
		nng_close(s->pull);
	}
	for (int i = 0; i < s->nworks; i++) {
		rep_cleanup(&s->works[i]);
		nng_aio_free(s->works[i].aio);
		ch_job_fini(&s->works[i].job);
		msgpack_sbuffer_destroy(&s->works[i].out);
	}
	if (s->pull_aio != NULL) {
		nng_aio_free(s->pull_aio);
	}
	for (int i = 0; s->slots != NULL && i < s->o.pull_slots; i++) {
		ch_job_fini(&s->slots[i].job);
		if (s->slots[i].msg != NULL) {
			ch_doc_fini(&s->slots[i].doc);
			nng_msg_free(s->slots[i].msg);
		}
	}
	if (s->pub_open) {
		nng_close(s->pub);
	}
	the_server = NULL;
	if (s->tls != NULL) {
		nng_tls_config_free(s->tls);
	}
	free(s->works);
	free(s->slots);
	free(s->pub_sizes);
	pthread_mutex_destroy(&s->pull_mu);
	pthread_mutex_destroy(&s->pubmu);
	free(s);
}
