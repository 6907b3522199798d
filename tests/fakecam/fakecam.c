/*
 * fakecam: an LD_PRELOAD shim that makes one device path behave like a UVC camera at the V4L2 ioctl
 * level, for face-edge's tests on kernels without V4L2. The program under test runs its real V4L2 code
 * (the v4l crate): open, QUERYCAP, ENUM_FMT, G/S/TRY_FMT, ENUM_FRAMESIZES, ENUM_FRAMEINTERVALS,
 * G/S_PARM, REQBUFS(MMAP), QUERYBUF, mmap, QBUF, poll, DQBUF, STREAMON/OFF, close.
 *
 * Configuration (environment):
 *   FAKECAM_DEVICE   path to emulate, e.g. /dev/video0 (need not exist)
 *   FAKECAM_FRAMES   directory of frames, played in name order: .jpg (MJPG) or raw .yuyv (YUYV)
 *   FAKECAM_FORMATS  formats offered, e.g. "MJPG,YUYV" (default MJPG)
 *   FAKECAM_WIDTH, FAKECAM_HEIGHT, FAKECAM_FPS   (default 640, 480, 10)
 *   FAKECAM_END      at the end of the frames: loop (default), eio (DQBUF fails with EIO) or
 *                    enodev (unplug: DQBUF fails with ENODEV and FAKECAM_UNPLUGGED is created)
 *   FAKECAM_UNPLUGGED  a file: while it exists the device is unplugged (open fails with ENOENT,
 *                    ioctls with ENODEV); deleting it replugs the camera, which starts its frames anew
 *
 * Pitfalls handled: the v4l crate issues ioctls through syscall(SYS_ioctl, ...) rather than ioctl(), so
 * syscall is wrapped too; buffers are a memfd mapped at the offsets QUERYBUF hands out; the fd given to
 * the client is a timerfd armed at the frame rate, so poll/epoll on it work for real; DQBUF with no
 * queued buffer blocks (or fails with EAGAIN on a non-blocking fd); STREAMOFF always succeeds.
 * Build without _FORTIFY_SOURCE so open() is not redirected to __open_2.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/videodev2.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define MAX_BUFFERS 8
#define MAX_FORMATS 4

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

struct fakecam {
    int fd;              /* timerfd handed to the client; -1 when closed */
    int nonblock;
    int memfd;
    unsigned nbuffers;
    size_t buffer_size;
    int queued[MAX_BUFFERS];
    unsigned queue_order[MAX_BUFFERS]; /* FIFO of queued buffer indices */
    unsigned queue_len;
    unsigned bytesused[MAX_BUFFERS];
    int streaming;
    uint32_t formats[MAX_FORMATS];
    unsigned nformats;
    uint32_t format;     /* current pixel format */
    unsigned width, height, fps;
    char **frames;
    unsigned nframes;
    unsigned next_frame;
    uint32_t sequence;
    enum { END_LOOP, END_EIO, END_ENODEV } end;
    int failed_errno;    /* sticky error after the frames ran out */
};

static struct fakecam cam = {.fd = -1, .memfd = -1};
static int configured;

static const char *env(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

static int unplugged(void) {
    const char *flag = getenv("FAKECAM_UNPLUGGED");
    struct stat st;
    return flag && *flag && stat(flag, &st) == 0;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void load_frames(void) {
    const char *dir = env("FAKECAM_FRAMES", NULL);
    for (unsigned i = 0; i < cam.nframes; i++) free(cam.frames[i]);
    free(cam.frames);
    cam.frames = NULL;
    cam.nframes = 0;
    if (!dir) return;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    unsigned cap = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (cam.nframes == cap) {
            cap = cap ? cap * 2 : 64;
            cam.frames = realloc(cam.frames, cap * sizeof(char *));
        }
        char *path = malloc(strlen(dir) + strlen(e->d_name) + 2);
        sprintf(path, "%s/%s", dir, e->d_name);
        cam.frames[cam.nframes++] = path;
    }
    closedir(d);
    qsort(cam.frames, cam.nframes, sizeof(char *), by_name);
}

static void configure(void) {
    if (configured) return;
    configured = 1;
    cam.width = (unsigned)atoi(env("FAKECAM_WIDTH", "640"));
    cam.height = (unsigned)atoi(env("FAKECAM_HEIGHT", "480"));
    cam.fps = (unsigned)atoi(env("FAKECAM_FPS", "10"));
    if (!cam.fps) cam.fps = 10;
    const char *formats = env("FAKECAM_FORMATS", "MJPG");
    for (const char *p = formats; *p && cam.nformats < MAX_FORMATS;) {
        if (strlen(p) >= 4) cam.formats[cam.nformats++] = v4l2_fourcc(p[0], p[1], p[2], p[3]);
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    cam.format = cam.formats[0];
    const char *end = env("FAKECAM_END", "loop");
    cam.end = !strcmp(end, "eio") ? END_EIO : !strcmp(end, "enodev") ? END_ENODEV : END_LOOP;
}

static int is_device(const char *path) {
    const char *dev = getenv("FAKECAM_DEVICE");
    return path && dev && *dev && strcmp(path, dev) == 0;
}

static size_t image_size(void) {
    return (size_t)cam.width * cam.height * 2; /* YUYV size; ample for a JPEG of the same frame */
}

static int open_device(int flags) {
    configure();
    if (unplugged()) {
        errno = ENOENT;
        return -1;
    }
    if (cam.fd >= 0) {
        errno = EBUSY;
        return -1;
    }
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    if (fd < 0) return -1;
    cam.fd = fd;
    cam.nonblock = (flags & O_NONBLOCK) != 0;
    cam.streaming = 0;
    cam.nbuffers = 0;
    cam.queue_len = 0;
    cam.next_frame = 0;
    cam.sequence = 0;
    cam.failed_errno = 0;
    load_frames();
    return fd;
}

/* ---- real functions ---- */
#define REAL(name, ret, ...)                                      \
    static ret (*real_##name)(__VA_ARGS__);                       \
    static void resolve_##name(void) {                            \
        if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name);  \
    }
REAL(open, int, const char *, int, ...)
REAL(open64, int, const char *, int, ...)
REAL(openat, int, int, const char *, int, ...)
REAL(openat64, int, int, const char *, int, ...)
REAL(close, int, int)
REAL(ioctl, int, int, unsigned long, ...)
REAL(syscall, long, long, ...)
REAL(mmap, void *, void *, size_t, int, int, int, off_t)
REAL(mmap64, void *, void *, size_t, int, int, int, off_t)

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    if (is_device(path)) {
        pthread_mutex_lock(&lock);
        int fd = open_device(flags);
        pthread_mutex_unlock(&lock);
        return fd;
    }
    resolve_open();
    return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    if (is_device(path)) return open(path, flags);
    resolve_open64();
    return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    if (is_device(path)) return open(path, flags);
    resolve_openat();
    return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    if (is_device(path)) return open(path, flags);
    resolve_openat64();
    return real_openat64(dirfd, path, flags, mode);
}

static void release_buffers(void) {
    if (cam.memfd >= 0) {
        resolve_close();
        real_close(cam.memfd);
    }
    cam.memfd = -1;
    cam.nbuffers = 0;
    cam.queue_len = 0;
    memset(cam.queued, 0, sizeof cam.queued);
}

int close(int fd) {
    pthread_mutex_lock(&lock);
    if (fd >= 0 && fd == cam.fd) {
        release_buffers();
        cam.fd = -1;
        cam.streaming = 0;
    }
    pthread_mutex_unlock(&lock);
    resolve_close();
    return real_close(fd);
}

static void *map_buffer(void *addr, size_t len, int prot, int flags, int fd, off_t offset, int *handled) {
    *handled = 0;
    pthread_mutex_lock(&lock);
    int mine = fd >= 0 && fd == cam.fd && cam.memfd >= 0;
    int memfd = cam.memfd;
    pthread_mutex_unlock(&lock);
    if (!mine) return NULL;
    *handled = 1;
    resolve_mmap();
    return real_mmap(addr, len, prot, flags, memfd, offset);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t offset) {
    int handled;
    void *p = map_buffer(addr, len, prot, flags, fd, offset, &handled);
    if (handled) return p;
    resolve_mmap();
    return real_mmap(addr, len, prot, flags, fd, offset);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t offset) {
    int handled;
    void *p = map_buffer(addr, len, prot, flags, fd, offset, &handled);
    if (handled) return p;
    resolve_mmap64();
    return real_mmap64(addr, len, prot, flags, fd, offset);
}

/* ---- the emulated driver ---- */

static void fill_pix(struct v4l2_pix_format *pix) {
    pix->width = cam.width;
    pix->height = cam.height;
    pix->field = V4L2_FIELD_NONE;
    pix->bytesperline = cam.format == V4L2_PIX_FMT_YUYV ? cam.width * 2 : 0;
    pix->sizeimage = (uint32_t)image_size();
    pix->colorspace = V4L2_COLORSPACE_SRGB;
    pix->pixelformat = cam.format;
}

static int offered(uint32_t f) {
    for (unsigned i = 0; i < cam.nformats; i++)
        if (cam.formats[i] == f) return 1;
    return 0;
}

static void arm_timer(int on) {
    struct itimerspec t = {0};
    if (on) {
        long ns = 1000000000L / cam.fps;
        t.it_interval.tv_sec = ns / 1000000000L;
        t.it_interval.tv_nsec = ns % 1000000000L;
        t.it_value = t.it_interval;
    }
    timerfd_settime(cam.fd, 0, &t, NULL);
}

/* Copies the next frame into buffer `index`; returns 0 or an errno at the end of the frames. */
static int next_frame_into(unsigned index) {
    if (cam.next_frame >= cam.nframes) {
        if (cam.end == END_EIO) return EIO;
        if (cam.end == END_ENODEV) {
            const char *flag = getenv("FAKECAM_UNPLUGGED");
            if (flag && *flag) {
                resolve_open();
                int f = real_open(flag, O_CREAT | O_WRONLY, 0644);
                if (f >= 0) real_close(f);
            }
            return ENODEV;
        }
        cam.next_frame = 0;
        if (!cam.nframes) return EIO;
    }
    const char *path = cam.frames[cam.next_frame++];
    resolve_open();
    int f = real_open(path, O_RDONLY);
    if (f < 0) return EIO;
    off_t base = (off_t)index * (off_t)cam.buffer_size;
    char chunk[65536];
    size_t total = 0;
    ssize_t n;
    while ((n = read(f, chunk, sizeof chunk)) > 0 && total + (size_t)n <= cam.buffer_size) {
        if (pwrite(cam.memfd, chunk, (size_t)n, base + (off_t)total) != n) break;
        total += (size_t)n;
    }
    real_close(f);
    cam.bytesused[index] = (unsigned)total;
    return 0;
}

static int dqbuf(struct v4l2_buffer *b) {
    if (!cam.streaming) return EINVAL;
    if (cam.failed_errno) return cam.failed_errno;
    /* Wait for the frame clock: the timerfd expires at the frame rate. */
    for (;;) {
        if (cam.queue_len == 0 && cam.nonblock) return EAGAIN;
        uint64_t ticks;
        struct pollfd p = {.fd = cam.fd, .events = POLLIN};
        int fd = cam.fd;
        pthread_mutex_unlock(&lock);
        int ready = poll(&p, 1, cam.nonblock ? 0 : 1000);
        pthread_mutex_lock(&lock);
        if (fd != cam.fd || !cam.streaming) return EINVAL;
        if (ready > 0 && read(cam.fd, &ticks, sizeof ticks) == sizeof ticks && cam.queue_len > 0) break;
        if (cam.nonblock) return EAGAIN;
    }
    unsigned index = cam.queue_order[0];
    int err = next_frame_into(index);
    if (err) {
        if (err == ENODEV || err == EIO) cam.failed_errno = err;
        return err;
    }
    memmove(cam.queue_order, cam.queue_order + 1, (cam.queue_len - 1) * sizeof(unsigned));
    cam.queue_len--;
    cam.queued[index] = 0;
    memset(b, 0, sizeof *b);
    b->index = index;
    b->type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    b->memory = V4L2_MEMORY_MMAP;
    b->bytesused = cam.bytesused[index];
    b->length = (uint32_t)cam.buffer_size;
    b->m.offset = (uint32_t)(index * cam.buffer_size);
    b->field = V4L2_FIELD_NONE;
    b->flags = V4L2_BUF_FLAG_MAPPED | V4L2_BUF_FLAG_DONE | V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC;
    b->sequence = cam.sequence++;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    b->timestamp.tv_sec = now.tv_sec;
    b->timestamp.tv_usec = now.tv_nsec / 1000;
    return 0;
}

static int device_ioctl(unsigned long request, void *arg) {
    if (unplugged() && request != VIDIOC_STREAMOFF) return ENODEV;
    switch (request) {
    case VIDIOC_QUERYCAP: {
        struct v4l2_capability *c = arg;
        memset(c, 0, sizeof *c);
        snprintf((char *)c->driver, sizeof c->driver, "uvcvideo");
        snprintf((char *)c->card, sizeof c->card, "face-edge fake camera");
        snprintf((char *)c->bus_info, sizeof c->bus_info, "usb-0000:00:14.0-1");
        c->version = 0x060100;
        c->device_caps = V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_STREAMING;
        c->capabilities = c->device_caps | V4L2_CAP_DEVICE_CAPS;
        return 0;
    }
    case VIDIOC_ENUM_FMT: {
        struct v4l2_fmtdesc *f = arg;
        if (f->type != V4L2_BUF_TYPE_VIDEO_CAPTURE || f->index >= cam.nformats) return EINVAL;
        uint32_t fourcc = cam.formats[f->index];
        uint32_t index = f->index, type = f->type;
        memset(f, 0, sizeof *f);
        f->index = index;
        f->type = type;
        f->pixelformat = fourcc;
        f->flags = fourcc == V4L2_PIX_FMT_MJPEG ? V4L2_FMT_FLAG_COMPRESSED : 0;
        snprintf((char *)f->description, sizeof f->description, "%s",
                 fourcc == V4L2_PIX_FMT_MJPEG ? "Motion-JPEG" : "YUYV 4:2:2");
        return 0;
    }
    case VIDIOC_G_FMT: {
        struct v4l2_format *f = arg;
        if (f->type != V4L2_BUF_TYPE_VIDEO_CAPTURE) return EINVAL;
        fill_pix(&f->fmt.pix);
        return 0;
    }
    case VIDIOC_S_FMT:
    case VIDIOC_TRY_FMT: {
        struct v4l2_format *f = arg;
        if (f->type != V4L2_BUF_TYPE_VIDEO_CAPTURE) return EINVAL;
        if (request == VIDIOC_S_FMT && cam.streaming) return EBUSY;
        uint32_t wanted = f->fmt.pix.pixelformat;
        uint32_t keep = cam.format;
        cam.format = offered(wanted) ? wanted : cam.formats[0];
        fill_pix(&f->fmt.pix); /* one frame size only: the driver adjusts width and height */
        if (request == VIDIOC_TRY_FMT) cam.format = keep;
        return 0;
    }
    case VIDIOC_ENUM_FRAMESIZES: {
        struct v4l2_frmsizeenum *s = arg;
        if (s->index != 0 || !offered(s->pixel_format)) return EINVAL;
        s->type = V4L2_FRMSIZE_TYPE_DISCRETE;
        s->discrete.width = cam.width;
        s->discrete.height = cam.height;
        return 0;
    }
    case VIDIOC_ENUM_FRAMEINTERVALS: {
        struct v4l2_frmivalenum *i = arg;
        if (i->index != 0 || !offered(i->pixel_format) || i->width != cam.width || i->height != cam.height)
            return EINVAL;
        i->type = V4L2_FRMIVAL_TYPE_DISCRETE;
        i->discrete.numerator = 1;
        i->discrete.denominator = cam.fps;
        return 0;
    }
    case VIDIOC_G_PARM:
    case VIDIOC_S_PARM: {
        struct v4l2_streamparm *p = arg;
        if (p->type != V4L2_BUF_TYPE_VIDEO_CAPTURE) return EINVAL;
        if (request == VIDIOC_S_PARM && p->parm.capture.timeperframe.numerator) {
            unsigned fps = p->parm.capture.timeperframe.denominator / p->parm.capture.timeperframe.numerator;
            if (fps >= 1 && fps <= 60) cam.fps = fps;
        }
        memset(&p->parm, 0, sizeof p->parm);
        p->parm.capture.capability = V4L2_CAP_TIMEPERFRAME;
        p->parm.capture.timeperframe.numerator = 1;
        p->parm.capture.timeperframe.denominator = cam.fps;
        p->parm.capture.readbuffers = 0;
        return 0;
    }
    case VIDIOC_REQBUFS: {
        struct v4l2_requestbuffers *r = arg;
        if (r->type != V4L2_BUF_TYPE_VIDEO_CAPTURE || r->memory != V4L2_MEMORY_MMAP) return EINVAL;
        if (cam.streaming) return EBUSY;
        release_buffers();
        if (r->count == 0) return 0;
        cam.nbuffers = r->count > MAX_BUFFERS ? MAX_BUFFERS : r->count;
        cam.buffer_size = (image_size() + 4095) & ~(size_t)4095;
        cam.memfd = memfd_create("fakecam-buffers", MFD_CLOEXEC);
        if (cam.memfd < 0 || ftruncate(cam.memfd, (off_t)(cam.buffer_size * cam.nbuffers)) != 0) return ENOMEM;
        r->count = cam.nbuffers;
        r->capabilities = V4L2_BUF_CAP_SUPPORTS_MMAP;
        return 0;
    }
    case VIDIOC_QUERYBUF:
    case VIDIOC_QBUF: {
        struct v4l2_buffer *b = arg;
        if (b->type != V4L2_BUF_TYPE_VIDEO_CAPTURE || b->memory != V4L2_MEMORY_MMAP || b->index >= cam.nbuffers)
            return EINVAL;
        if (request == VIDIOC_QBUF) {
            if (cam.queued[b->index]) return EINVAL;
            cam.queued[b->index] = 1;
            cam.queue_order[cam.queue_len++] = b->index;
        }
        b->length = (uint32_t)cam.buffer_size;
        b->m.offset = (uint32_t)(b->index * cam.buffer_size);
        b->flags = V4L2_BUF_FLAG_MAPPED | (cam.queued[b->index] ? V4L2_BUF_FLAG_QUEUED : 0);
        return 0;
    }
    case VIDIOC_DQBUF:
        return dqbuf(arg);
    case VIDIOC_STREAMON:
        if (!cam.nbuffers) return EINVAL;
        cam.streaming = 1;
        arm_timer(1);
        return 0;
    case VIDIOC_STREAMOFF:
        /* Always succeeds, as the v4l crate requires in Drop; buffers return to the application. */
        cam.streaming = 0;
        arm_timer(0);
        cam.queue_len = 0;
        memset(cam.queued, 0, sizeof cam.queued);
        return 0;
    default:
        return ENOTTY;
    }
}

static int handle_ioctl(int fd, unsigned long request, void *arg, int *handled) {
    pthread_mutex_lock(&lock);
    *handled = fd >= 0 && fd == cam.fd;
    int err = *handled ? device_ioctl(request, arg) : 0;
    pthread_mutex_unlock(&lock);
    if (!*handled) return 0;
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

int ioctl(int fd, unsigned long request, ...) {
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    int handled;
    int ret = handle_ioctl(fd, request, arg, &handled);
    if (handled) return ret;
    resolve_ioctl();
    return real_ioctl(fd, request, arg);
}

long syscall(long number, ...) {
    va_list ap;
    va_start(ap, number);
    long a[6];
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_ioctl) {
        int handled;
        int ret = handle_ioctl((int)a[0], (unsigned long)a[1], (void *)a[2], &handled);
        if (handled) return ret;
    }
    resolve_syscall();
    return real_syscall(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
