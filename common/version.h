#ifndef XMPP_VERSION_H
#define XMPP_VERSION_H
#define XMPPD_VERSION "0.1.0"
#endif
