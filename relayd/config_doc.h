/* config_doc.h - relayd.conf's documentation, written from the key table. */
#ifndef RELAYD_CONFIG_DOC_H
#define RELAYD_CONFIG_DOC_H

#include <stdio.h>

/* Writes every key with its default and help text, as conf/relayd.conf. */
void		 config_dump_defaults(FILE *);
/* Writes relayd.conf(5) in man(7) roff, from the same table. */
void		 config_write_man(FILE *);

#endif
