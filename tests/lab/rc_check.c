/*
 * The rxe lab's data-checked peer, run in the guest on kernel rxe: one RC
 * queue pair over a 1 MiB buffer (pinned, or on demand with -o), set up
 * through a line exchange over TCP, then commands from the lab, one line
 * each, answered with one line:
 *
 *   FILL off len seed    the buffer gets the pattern       -> OK
 *   CHECK off len seed   the buffer is compared with it    -> OK | BAD at i got x want y
 *   WRITE loff roff len  RDMA WRITE to the peer's buffer   -> OK | ERR status
 *   READ loff roff len   RDMA READ from the peer's buffer  -> OK | ERR status
 *   QUIT                                                    -> OK, exit 0
 *
 * The pattern is byte i = i * 131 + seed * 7 + 1 (mod 256), as the
 * project's tools make it.
 *
 *   rc_check -p PORT [-x GID_INDEX] [-o]
 */
#include <errno.h>
#include <infiniband/verbs.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF_LEN (1u << 20)

static uint8_t pattern(size_t i, unsigned seed)
{
	return (uint8_t)(i * 131u + seed * 7u + 1u);
}

static void die(const char *what)
{
	fprintf(stderr, "rc_check: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Waits up to 10 s for one completion; returns its status or -1. */
static int await_completion(struct ibv_cq *cq)
{
	struct ibv_wc wc;
	struct timespec start, now;

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		int n = ibv_poll_cq(cq, 1, &wc);

		if (n < 0)
			return -1;
		if (n == 1)
			return wc.status;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - start.tv_sec > 10)
			return -1;
	}
}

static int to_rts(struct ibv_qp *qp, int gid_index, unsigned dest_qpn, unsigned dest_psn,
		  unsigned my_psn, const union ibv_gid *dgid)
{
	struct ibv_qp_attr a;

	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_INIT;
	a.port_num = 1;
	a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
	if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
			  IBV_QP_ACCESS_FLAGS))
		return -1;
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTR;
	a.path_mtu = IBV_MTU_1024;
	a.dest_qp_num = dest_qpn;
	a.rq_psn = dest_psn;
	a.max_dest_rd_atomic = 4;
	a.min_rnr_timer = 12;
	a.ah_attr.is_global = 1;
	a.ah_attr.grh.dgid = *dgid;
	a.ah_attr.grh.sgid_index = gid_index;
	a.ah_attr.grh.hop_limit = 64;
	a.ah_attr.port_num = 1;
	if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU |
			  IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
			  IBV_QP_MIN_RNR_TIMER))
		return -1;
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	a.timeout = 14;
	a.retry_cnt = 7;
	a.rnr_retry = 7;
	a.sq_psn = my_psn;
	a.max_rd_atomic = 4;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
			     IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
}

static int accept_one(int port)
{
	struct sockaddr_in sa;
	int one = 1, l = socket(AF_INET, SOCK_STREAM, 0), s;

	if (l < 0)
		die("socket");
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons(port);
	if (bind(l, (struct sockaddr *)&sa, sizeof(sa)) || listen(l, 1))
		die("listen");
	s = accept(l, NULL, NULL);
	if (s < 0)
		die("accept");
	close(l);
	return s;
}

int main(int argc, char **argv)
{
	int port = 0, gid_index = 1, odp = 0, opt, sock;
	struct ibv_device **devs;
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	struct ibv_cq *cq;
	struct ibv_mr *mr;
	struct ibv_qp *qp;
	struct ibv_qp_init_attr init;
	union ibv_gid gid, rgid;
	unsigned rqpn, rpsn, rrkey, psn = (unsigned)getpid() & 0xffffff, i;
	unsigned long long rvaddr;
	char line[256], hex[33];
	uint8_t *buf;
	FILE *in, *out;

	while ((opt = getopt(argc, argv, "p:x:o")) != -1) {
		if (opt == 'p')
			port = atoi(optarg);
		else if (opt == 'x')
			gid_index = atoi(optarg);
		else if (opt == 'o')
			odp = 1;
		else
			return 2;
	}
	devs = ibv_get_device_list(NULL);
	if (!devs || !devs[0])
		die("no RDMA device");
	ctx = ibv_open_device(devs[0]);
	if (!ctx)
		die("ibv_open_device");
	pd = ibv_alloc_pd(ctx);
	cq = ibv_create_cq(ctx, 16, NULL, NULL, 0);
	buf = mmap(NULL, BUF_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!pd || !cq || buf == MAP_FAILED)
		die("resources");
	if (!odp)
		memset(buf, 0, BUF_LEN);
	mr = ibv_reg_mr(pd, buf, BUF_LEN, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
			IBV_ACCESS_REMOTE_READ | (odp ? IBV_ACCESS_ON_DEMAND : 0));
	if (!mr)
		die("ibv_reg_mr");
	memset(&init, 0, sizeof(init));
	init.send_cq = cq;
	init.recv_cq = cq;
	init.qp_type = IBV_QPT_RC;
	init.cap.max_send_wr = 4;
	init.cap.max_recv_wr = 4;
	init.cap.max_send_sge = 1;
	init.cap.max_recv_sge = 1;
	qp = ibv_create_qp(pd, &init);
	if (!qp || ibv_query_gid(ctx, 1, gid_index, &gid))
		die("queue pair / GID");

	sock = accept_one(port);
	in = fdopen(sock, "r");
	out = fdopen(dup(sock), "w");
	for (i = 0; i < 16; i++)
		sprintf(hex + 2 * i, "%02x", gid.raw[i]);
	fprintf(out, "%06x %06x %08x %016llx %s odp=%d\n", qp->qp_num, psn, mr->rkey,
		(unsigned long long)(uintptr_t)buf, hex, odp);
	fflush(out);
	if (!fgets(line, sizeof(line), in) ||
	    sscanf(line, "%x %x %x %llx %32s", &rqpn, &rpsn, &rrkey, &rvaddr, hex) != 5)
		die("peer's line");
	for (i = 0; i < 16; i++) {
		unsigned b;

		sscanf(hex + 2 * i, "%2x", &b);
		rgid.raw[i] = (uint8_t)b;
	}
	if (to_rts(qp, gid_index, rqpn, rpsn, psn, &rgid))
		die("ibv_modify_qp");

	while (fgets(line, sizeof(line), in)) {
		unsigned long a = 0, b = 0, c = 0;
		char cmd[16];

		if (sscanf(line, "%15s %lu %lu %lu", cmd, &a, &b, &c) < 1)
			break;
		if (!strcmp(cmd, "QUIT")) {
			fprintf(out, "OK\n");
			fflush(out);
			return 0;
		}
		if (!strcmp(cmd, "FILL") && a + b <= BUF_LEN) {
			for (i = 0; i < b; i++)
				buf[a + i] = pattern(i, c);
			fprintf(out, "OK\n");
		} else if (!strcmp(cmd, "CHECK") && a + b <= BUF_LEN) {
			for (i = 0; i < b && buf[a + i] == pattern(i, c); i++)
				;
			if (i == b)
				fprintf(out, "OK\n");
			else
				fprintf(out, "BAD at %u got %u want %u\n", i, buf[a + i],
					pattern(i, c));
		} else if ((!strcmp(cmd, "WRITE") || !strcmp(cmd, "READ")) && a + c <= BUF_LEN) {
			struct ibv_sge sge = { (uintptr_t)(buf + a), (uint32_t)c, mr->lkey };
			struct ibv_send_wr wr, *bad;
			int status;

			memset(&wr, 0, sizeof(wr));
			wr.sg_list = &sge;
			wr.num_sge = 1;
			wr.opcode = cmd[0] == 'W' ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
			wr.send_flags = IBV_SEND_SIGNALED;
			wr.wr.rdma.remote_addr = rvaddr + b;
			wr.wr.rdma.rkey = rrkey;
			status = ibv_post_send(qp, &wr, &bad) ? -1 : await_completion(cq);
			if (status == 0)
				fprintf(out, "OK\n");
			else
				fprintf(out, "ERR %d\n", status);
		} else {
			fprintf(out, "ERR bad command\n");
		}
		fflush(out);
	}
	return 1;
}
