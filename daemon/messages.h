/* SPDX-License-Identifier: MIT */
#pragma once

/* Journal MESSAGE_IDs, one per kind of outcome.  systemd/retired.catalog
 * explains each one; keep the two in step (a test checks they match). */

#define MESSAGE_RELEASED         "ea3f3c021b7e4fc383f8a850da4237b5"
#define MESSAGE_SCHEDULED        "8a5905647d6f48f2a5ec41bcd70eef2c"
#define MESSAGE_DEFERRED         "a2884ab6e5254e4d925caa5fdf6a56c6"
#define MESSAGE_RETRYING         "b9d5960a33b04b29b93d472fecd6f928"
#define MESSAGE_FAILED           "699ac9948fe444e7bef90aa8b1ec7f29"
#define MESSAGE_CANCELLED        "af2cb9a2f6264bd2bb4d00ded35d43a3"
#define MESSAGE_UNRESOLVED       "ece374c6e26341fc9c0be110dce7cae9"
#define MESSAGE_IN_USE           "5c0d3f4a8e2b4d7f9a61b2c3d4e5f607"
#define MESSAGE_AUTH_PAUSED      "3bf66e58c3194ee183e468cbb50ba76d"
#define MESSAGE_PASS_SUMMARY     "f4854911765647239a66ecc152f5bbf3"
#define MESSAGE_CONFIG_LOADED    "bbfdb428cc5c4837ba4d31eaf923b25c"
#define MESSAGE_CONFIG_REJECTED  "e5329d4dfcc44af288b4053e8e3b1263"
#define MESSAGE_APPROVAL_NEEDED  "209e7f40f4594708b06bde2f750c34d6"
#define MESSAGE_DRY_RUN          "7eb7ab57b2a34ef49931b1b87140d214"
#define MESSAGE_CLOCK_SKEW       "5d1f0c8e2b7a4c39a6e4f1b08d3c7e52"
#define MESSAGE_PAUSED           "362f5c14275a429aa3687c1283f32c7e"
#define MESSAGE_RESUMED          "2419620a9ec84780a54861d4b45d30c8"
