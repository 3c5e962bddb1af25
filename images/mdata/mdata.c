/*
 * mdata-get, mdata-list, mdata-put, mdata-delete: a small client of the
 * SmartOS metadata protocol (version 2) for Nereid's sample images, one
 * static binary that acts by the name it is called with.
 *
 *   mdata-get KEY          prints the value (exit 1: no such key)
 *   mdata-list             prints the instance's own keys, one per line
 *   mdata-put KEY [VALUE]  sets KEY (the value from stdin without VALUE)
 *   mdata-delete KEY       removes KEY
 *
 * It talks to the socket the node's agent serves each container at
 * /native/.zonecontrol/metadata.sock (NEREID_MDATA_SOCKET overrides it) or,
 * in a VM, to the virtio-serial port named org.smartos.metadata.
 * Exit codes follow SmartOS's mdata-client: 0 done, 1 not found, 2 error,
 * 3 usage.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/native/.zonecontrol/metadata.sock"
#define EXIT_NOTFOUND 1
#define EXIT_ERROR 2
#define EXIT_USAGE 3
#define MAX_LINE (1024 * 1024)
#define PORT_NAME "org.smartos.metadata"
#define TIMEOUT_MS 10000

static const char *prog = "mdata";

static void die(int code, const char *what) {
	fprintf(stderr, "%s: %s\n", prog, what);
	exit(code);
}

static uint32_t crc32(const unsigned char *p, size_t n) {
	uint32_t crc = 0xffffffffu;
	for (size_t i = 0; i < n; i++) {
		crc ^= p[i];
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
	}
	return ~crc;
}

static const char B64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const unsigned char *in, size_t n) {
	char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
	if (out == NULL)
		die(EXIT_ERROR, "out of memory");
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < n)
			v |= in[i + 2];
		*o++ = B64[(v >> 18) & 63];
		*o++ = B64[(v >> 12) & 63];
		*o++ = i + 1 < n ? B64[(v >> 6) & 63] : '=';
		*o++ = i + 2 < n ? B64[v & 63] : '=';
	}
	*o = '\0';
	return out;
}

/* Decodes `in` (NUL-terminated) into a NUL-terminated buffer; NULL if malformed. */
static char *b64_decode(const char *in, size_t *outlen) {
	size_t n = strlen(in);
	if (n % 4 != 0)
		return NULL;
	unsigned char *out = malloc(n / 4 * 3 + 1);
	size_t o = 0;
	if (out == NULL)
		die(EXIT_ERROR, "out of memory");
	for (size_t i = 0; i < n; i += 4) {
		uint32_t v = 0;
		int pad = 0;
		for (int k = 0; k < 4; k++) {
			char c = in[i + k];
			const char *p = c ? strchr(B64, c) : NULL;
			if (c == '=' && i + 4 == n && k >= 2) {
				pad++;
				v <<= 6;
			} else if (p != NULL && pad == 0) {
				v = (v << 6) | (uint32_t)(p - B64);
			} else {
				free(out);
				return NULL;
			}
		}
		out[o++] = (v >> 16) & 0xff;
		if (pad < 2)
			out[o++] = (v >> 8) & 0xff;
		if (pad < 1)
			out[o++] = v & 0xff;
	}
	out[o] = '\0';
	if (outlen)
		*outlen = o;
	return (char *)out;
}

static int sock = -1;

static void send_all(const char *s) {
	size_t n = strlen(s);
	while (n > 0) {
		ssize_t w = write(sock, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die(EXIT_ERROR, "writing to the metadata service failed");
		s += w;
		n -= (size_t)w;
	}
}

/* One line from the service, without its newline (caller frees). */
static char *recv_line(void) {
	size_t cap = 256, len = 0;
	char *buf = malloc(cap);
	if (buf == NULL)
		die(EXIT_ERROR, "out of memory");
	for (;;) {
		char c;
		struct pollfd p = {sock, POLLIN, 0};
		if (poll(&p, 1, TIMEOUT_MS) <= 0)
			die(EXIT_ERROR, "the metadata service did not answer in time");
		ssize_t r = read(sock, &c, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			die(EXIT_ERROR, "the metadata service closed the connection or timed out");
		if (c == '\n')
			break;
		if (len + 2 > cap) {
			if (cap >= MAX_LINE)
				die(EXIT_ERROR, "the metadata service sent an overlong line");
			cap *= 2;
			buf = realloc(buf, cap);
			if (buf == NULL)
				die(EXIT_ERROR, "out of memory");
		}
		buf[len++] = c;
	}
	buf[len] = '\0';
	return buf;
}

/* A VM's metadata port: /dev/vportNpM whose name is PORT_NAME; -1 if none. */
static int open_port(void) {
	DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *e;
	int fd = -1;
	if (d == NULL)
		return -1;
	while (fd < 0 && (e = readdir(d)) != NULL) {
		char path[512], name[64] = "";
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
		FILE *f = fopen(path, "r");
		if (f == NULL)
			continue;
		if (fgets(name, sizeof(name), f) != NULL)
			name[strcspn(name, "\n")] = '\0';
		fclose(f);
		if (strcmp(name, PORT_NAME) == 0) {
			snprintf(path, sizeof(path), "/dev/%s", e->d_name);
			fd = open(path, O_RDWR | O_NOCTTY);
		}
	}
	closedir(d);
	return fd;
}

/* Reads lines until `want` (a port may hold answers to an earlier client). */
static void expect_line(const char *want) {
	for (int i = 0; i < 32; i++) {
		char *l = recv_line();
		int ok = strcmp(l, want) == 0;
		free(l);
		if (ok)
			return;
	}
	die(EXIT_ERROR, "the metadata service does not speak version 2");
}

static void connect_service(void) {
	const char *path = getenv("NEREID_MDATA_SOCKET");
	struct sockaddr_un sa;
	if ((path == NULL || *path == '\0') && access(DEFAULT_SOCKET, F_OK) != 0 &&
	    (sock = open_port()) >= 0) {
		/* One client at a time on the port; drop what an earlier one left. */
		char junk[256];
		struct pollfd p = {sock, POLLIN, 0};
		flock(sock, LOCK_EX);
		while (poll(&p, 1, 50) > 0 && read(sock, junk, sizeof(junk)) > 0)
			;
		send_all("NEGOTIATE V2\n");
		expect_line("V2_OK");
		return;
	}
	if (path == NULL || *path == '\0')
		path = DEFAULT_SOCKET;
	if (strlen(path) >= sizeof(sa.sun_path))
		die(EXIT_ERROR, "the socket path is too long");
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	strcpy(sa.sun_path, path);
	/* The agent may be restarting: try for about 5 s, as mdata-client does. */
	for (int attempt = 0;; attempt++) {
		sock = socket(AF_UNIX, SOCK_STREAM, 0);
		if (sock >= 0 && connect(sock, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		int e = errno;
		if (sock >= 0)
			close(sock);
		sock = -1;
		errno = e;
		if (attempt >= 10 || (e != ECONNREFUSED && e != ENOENT && e != EAGAIN))
			break;
		usleep(500 * 1000);
	}
	if (sock < 0) {
		fprintf(stderr, "%s: cannot reach the metadata service at %s: %s\n", prog,
		    path, strerror(errno));
		exit(EXIT_ERROR);
	}
	send_all("NEGOTIATE V2\n");
	expect_line("V2_OK");
}

/*
 * Sends `cmd` with `arg` (raw, base64-encoded here; NULL for none) and
 * returns the answer's code; *value gets the decoded payload (or NULL).
 */
static char *request(const char *cmd, const char *arg, char **value) {
	char reqid[9], *b64 = arg ? b64_encode((const unsigned char *)arg, strlen(arg)) : NULL;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(reqid, sizeof(reqid), "%08x",
	    (unsigned)(ts.tv_nsec ^ ((unsigned)getpid() << 16) ^ (unsigned)ts.tv_sec));
	size_t blen = strlen(reqid) + 1 + strlen(cmd) + (b64 ? 1 + strlen(b64) : 0);
	char *body = malloc(blen + 1);
	char *frame = malloc(blen + 32);
	if (body == NULL || frame == NULL)
		die(EXIT_ERROR, "out of memory");
	snprintf(body, blen + 1, "%s %s%s%s", reqid, cmd, b64 ? " " : "", b64 ? b64 : "");
	snprintf(frame, blen + 32, "V2 %zu %08x %s\n", blen,
	    crc32((const unsigned char *)body, blen), body);
	send_all(frame);
	free(b64);
	free(frame);
	free(body);

	char *line = NULL;
	for (int i = 0;; i++) {
		line = recv_line();
		/* An answer to an earlier client on a port: not ours, skip it. */
		char *mine = strstr(line, reqid);
		if (mine != NULL || i >= 32)
			break;
		free(line);
	}
	char *save = NULL;
	char *v2 = strtok_r(line, " ", &save), *len = strtok_r(NULL, " ", &save);
	char *crc = strtok_r(NULL, " ", &save), *rest = save;
	if (v2 == NULL || strcmp(v2, "V2") != 0 || len == NULL || crc == NULL || rest == NULL)
		die(EXIT_ERROR, "malformed answer from the metadata service");
	char want[9];
	snprintf(want, sizeof(want), "%08x", crc32((const unsigned char *)rest, strlen(rest)));
	if ((size_t)strtoul(len, NULL, 10) != strlen(rest) || strcmp(crc, want) != 0)
		die(EXIT_ERROR, "corrupt answer from the metadata service");
	char *rid = strtok_r(rest, " ", &save), *code = strtok_r(NULL, " ", &save);
	char *payload = strtok_r(NULL, " ", &save);
	if (rid == NULL || code == NULL || strcmp(rid, reqid) != 0)
		die(EXIT_ERROR, "the answer is for another request");
	*value = NULL;
	if (payload != NULL && (*value = b64_decode(payload, NULL)) == NULL)
		die(EXIT_ERROR, "the answer's value is not base64");
	char *out = strdup(code);
	free(line);
	return out;
}

static char *read_stdin(void) {
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	ssize_t r;
	if (buf == NULL)
		die(EXIT_ERROR, "out of memory");
	while ((r = read(0, buf + len, cap - len - 1)) > 0) {
		len += (size_t)r;
		if (len + 1 == cap) {
			if (cap >= MAX_LINE / 2)
				die(EXIT_ERROR, "the value is too large");
			cap *= 2;
			buf = realloc(buf, cap);
			if (buf == NULL)
				die(EXIT_ERROR, "out of memory");
		}
	}
	buf[len] = '\0';
	return buf;
}

static int finish(const char *code, char *value, int print) {
	if (strcmp(code, "SUCCESS") == 0) {
		if (print && value != NULL)
			printf("%s\n", value);
		return 0;
	}
	if (strcmp(code, "NOTFOUND") == 0)
		return EXIT_NOTFOUND;
	fprintf(stderr, "%s: %s%s%s\n", prog, code, value ? ": " : "", value ? value : "");
	return EXIT_ERROR;
}

int main(int argc, char **argv) {
	const char *slash = strrchr(argv[0], '/');
	char *value = NULL, *code;
	prog = slash ? slash + 1 : argv[0];

	if (strcmp(prog, "mdata-get") == 0) {
		if (argc != 2)
			die(EXIT_USAGE, "usage: mdata-get KEY");
		connect_service();
		code = request("GET", argv[1], &value);
		if (strcmp(code, "NOTFOUND") == 0) {
			fprintf(stderr, "No metadata for '%s'\n", argv[1]);
			return EXIT_NOTFOUND;
		}
		return finish(code, value, 1);
	}
	if (strcmp(prog, "mdata-list") == 0) {
		if (argc != 1)
			die(EXIT_USAGE, "usage: mdata-list");
		connect_service();
		code = request("KEYS", NULL, &value);
		return finish(code, value, value != NULL && *value != '\0');
	}
	if (strcmp(prog, "mdata-put") == 0) {
		if (argc != 2 && argc != 3)
			die(EXIT_USAGE, "usage: mdata-put KEY [VALUE]  (VALUE from stdin without it)");
		char *val = argc == 3 ? argv[2] : read_stdin();
		char *k = b64_encode((const unsigned char *)argv[1], strlen(argv[1]));
		char *v = b64_encode((const unsigned char *)val, strlen(val));
		char *arg = malloc(strlen(k) + strlen(v) + 2);
		if (arg == NULL)
			die(EXIT_ERROR, "out of memory");
		sprintf(arg, "%s %s", k, v);
		connect_service();
		code = request("PUT", arg, &value);
		return finish(code, value, 0);
	}
	if (strcmp(prog, "mdata-delete") == 0) {
		if (argc != 2)
			die(EXIT_USAGE, "usage: mdata-delete KEY");
		connect_service();
		code = request("DELETE", argv[1], &value);
		return finish(code, value, 0);
	}
	fprintf(stderr, "%s: call me as mdata-get, mdata-list, mdata-put or mdata-delete\n", prog);
	return EXIT_USAGE;
}
