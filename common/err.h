/* One error convention for the whole code base (see STYLE.md):
 * functions return 0 on success or one of these negative codes. */
#ifndef XMPP_ERR_H
#define XMPP_ERR_H

enum {
  XMPP_OK = 0,
  XMPP_ERR = -1,      /* generic failure */
  XMPP_AGAIN = -2,    /* need more bytes / try later */
  XMPP_EINVAL = -3,   /* malformed input */
  XMPP_ENOENT = -4,   /* no such item */
  XMPP_EEXIST = -5,   /* already exists */
  XMPP_ELIMIT = -6,   /* a configured limit was hit */
  XMPP_EIO = -7,      /* storage or system I/O error */
  XMPP_EDENIED = -8,  /* not allowed (policy) */
};

const char *xmpp_strerror(int code);

#endif
