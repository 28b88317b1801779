/* XEP-0054 vcard-temp, with the server side of XEP-0153 vCard-based avatars.
 *
 * vCards: an account's vCard is one document (store_doc_*, kind "vcard"), kept in the
 * stored (encoded) form. The account gets and sets its own (no 'to', or its bare JID);
 * anyone may get another account's vCard at its bare JID (XEP-0054 §3.3, §6: vCards are
 * world-readable), answered by the server, never by a resource.
 *  - none stored: the account itself gets an empty <vCard/> (§3.1 allows it or an
 *    error); another entity gets <service-unavailable/> (§3.3), as for an account that
 *    does not exist, so it learns nothing more;
 *  - a set on another account's vCard: <forbidden/> (§3.2);
 *  - a vCard whose XML is over limits.max_doc_bytes: <not-acceptable/> (type modify,
 *    the condition RFC 6121 §2.3.3 gives for a roster item over a server limit, and
 *    XEP-0060 for a payload too big); over the account's document budget
 *    (limits.max_account_doc_bytes): <not-allowed/>.
 *
 * Avatars (XEP-0153 §3.1): when a vCard is set, the server takes the SHA-1 of its photo
 * (the base64-decoded <PHOTO><BINVAL/>, whitespace ignored, §4.4 rule 5) and keeps it as a
 * small document of its own ("vcard"/"photo": 40 hex digits). A broadcast available
 * presence without <x xmlns='vcard-temp:x:update'/> then gets one with that hash, so
 * contacts see avatars of clients that do not announce them themselves (as Prosody's
 * mod_vcard_legacy does); a client that includes its own x:update is left alone. A
 * BINVAL that is not base64 is stored as given but announces no hash. The hash is read
 * once per session (its first presence) and kept in the session's slot; a vCard set
 * updates the slots of the account's sessions (its next presence carries the new hash;
 * XEP-0153 §3.1 has the client send one). */
#include "router/module.h"

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/sha.h>

#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"
#include "common/scram.h"

#define NS_VCARD "vcard-temp"
#define NS_VCARD_UPDATE "vcard-temp:x:update"
#define KIND "vcard"
#define KEY_CARD ""
#define KEY_PHOTO "photo"
#define HASH_HEX 40

extern const module_t mod_vcard;

/* A session's view of its account's photo hash ("" for none). */
typedef struct avatar {
  char hash[HASH_HEX + 1];
} avatar_t;

/* The SHA-1 of the vCard's photo in hex into out: 1, or 0 when there is no photo, or its
 * BINVAL is empty or not base64 (XEP-0153 §4.4 rule 5: whitespace is ignored). */
static int photo_hash(worker_t *w, const xnode_t *vcard, char out[HASH_HEX + 1]) {
  const xnode_t *photo = xnode_child(vcard, "PHOTO", NS_VCARD);
  const xnode_t *bin = photo ? xnode_child(photo, "BINVAL", NS_VCARD) : NULL;
  if (!bin) return 0;
  const char *t = xnode_text(&w->arena, bin);
  size_t n = strlen(t), m = 0;
  char *b64 = arena_alloc(&w->arena, n + 1);
  for (size_t i = 0; i < n; i++)
    if (t[i] != ' ' && t[i] != '\t' && t[i] != '\r' && t[i] != '\n') b64[m++] = t[i];
  unsigned char *img = NULL;
  size_t len = 0;
  if (!m || b64_decode(b64, m, &img, &len) != 0 || !len) {
    xfree(img);
    return 0;
  }
  unsigned char d[WC_SHA_DIGEST_SIZE];
  int rc = wc_ShaHash(img, (word32)len, d);
  xfree(img);
  if (rc != 0) return 0;
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < WC_SHA_DIGEST_SIZE; i++) {
    out[2 * i] = hex[d[i] >> 4];
    out[2 * i + 1] = hex[d[i] & 15];
  }
  out[HASH_HEX] = '\0';
  return 1;
}

static void get(mod_iq_ctx_t *c) {
  int rc;
  xnode_t *card = mod_doc_get(c->w, c->u->bare, KIND, KEY_CARD, &rc);
  if (rc == XMPP_ENOENT) {
    if (c->self) mod_iq_result(c, xnode_new(&c->w->arena, "vCard", NS_VCARD)); /* §3.1 */
    else mod_iq_error(c, "cancel", "service-unavailable");                    /* §3.3 */
    return;
  }
  if (rc) {
    mod_iq_error(c, "wait", "internal-server-error");
    return;
  }
  mod_iq_result(c, card);
}

static void set_sessions_hash(worker_t *w, user_t *u, const char *hash) {
  for (session_t *s = u->sessions; s; s = s->next) {
    avatar_t *a = *mod_session_state(s, &mod_vcard);
    if (a) snprintf(a->hash, sizeof a->hash, "%s", hash);
  }
}

static void set(mod_iq_ctx_t *c) {
  if (!c->self) {
    mod_iq_error(c, "auth", "forbidden"); /* §3.2 */
    return;
  }
  worker_t *w = c->w;
  if (mod_xml_len(c->payload) > (size_t)w->cfg->max_doc_bytes) {
    mod_iq_error(c, "modify", "not-acceptable");
    return;
  }
  char hash[HASH_HEX + 1] = "";
  int has = photo_hash(w, c->payload, hash);
  int rc = mod_doc_put(w, c->u->bare, KIND, KEY_CARD, c->payload);
  if (rc) {
    mod_iq_store_error(c, rc);
    return;
  }
  /* the hash after the vCard: a hash without its vCard is never announced. A hash that
   * does not fit the budget is not kept (no hash announced rather than a stale one). */
  int hrc = has ? store_doc_put(w->store, c->u->bare, KIND, KEY_PHOTO, hash, HASH_HEX,
                                (size_t)w->cfg->max_account_doc_bytes)
                : XMPP_ENOENT;
  if (hrc) {
    int drc = store_doc_delete(w->store, c->u->bare, KIND, KEY_PHOTO);
    if (has || (drc && drc != XMPP_ENOENT))
      log_warn("avatar hash of %s not kept: %s", c->u->bare, xmpp_strerror(has ? hrc : drc));
    hash[0] = '\0';
  }
  set_sessions_hash(w, c->u, hash);
  mod_iq_result(c, NULL);
}

/* The session's slot, read from the store on first use; NULL when the store could not
 * say (nothing is added then). */
static avatar_t *avatar_of(worker_t *w, user_t *u, session_t *s) {
  void **slot = mod_session_state(s, &mod_vcard);
  if (*slot) return *slot;
  char *data = NULL;
  size_t len = 0;
  int rc = store_doc_get(w->store, u->bare, KIND, KEY_PHOTO, &data, &len);
  if (rc && rc != XMPP_ENOENT) return NULL;
  avatar_t *a = xcalloc(1, sizeof *a);
  if (!rc && len == HASH_HEX) memcpy(a->hash, data, HASH_HEX);
  xfree(data);
  *slot = a;
  return a;
}

/* HOOK_PRESENCE_OUT: a broadcast available presence without the client's own x:update
 * gets the server's (XEP-0153). */
static int presence_out(mod_event_t *e) {
  if ((e->to && *e->to) || xnode_attr(e->st, "type") || xnode_child(e->st, "x", NS_VCARD_UPDATE)) return MOD_OK;
  avatar_t *a = avatar_of(e->w, e->u, e->s);
  if (!a || !a->hash[0]) return MOD_OK;
  arena_t *ar = &e->w->arena;
  xnode_t *x = xnode_add(ar, e->st, "x", NS_VCARD_UPDATE);
  xnode_add_text(ar, xnode_add(ar, x, "photo", NS_VCARD_UPDATE), a->hash, HASH_HEX);
  e->w->frame_tree = NULL; /* changed: encoded again when sent */
  return MOD_OK;
}

static void avatar_free(void *p) { xfree(p); }

static const mod_iq_t iqs[] = {
    {NS_VCARD, "vCard", MOD_GET, MOD_AT_ACCOUNT, MOD_ANYONE, get},
    {NS_VCARD, "vCard", MOD_SET, MOD_AT_ACCOUNT, MOD_ANYONE, set},
    {0},
};
static const char *const features[] = {NS_VCARD, NULL};

const module_t mod_vcard = {
    .name = "vcard",
    .server_features = features,
    .account_features = features,
    .iqs = iqs,
    .hooks = {[HOOK_PRESENCE_OUT] = presence_out},
    .session_free = avatar_free,
};
