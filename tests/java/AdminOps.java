// Kafka's AdminClient, every operation an operator's tooling uses, against
// one bootstrap (Switchyard or a broker directly). Run as a single source
// file: java -cp '<kafka libs>/*' AdminOps.java <bootstrap> <topic> <group>
//
// Prints one JSON object per operation: {"op": ..., "ok": true|false, ...};
// the Python test reads them (tests/test_java_clients.py).
import java.time.Duration;
import java.util.*;
import java.util.concurrent.ExecutionException;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.*;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.serialization.*;

public class AdminOps {
    static String bootstrap;

    static String q(Object o) {
        return "\"" + String.valueOf(o).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", " ") + "\"";
    }

    interface Op { String run() throws Exception; }

    static void op(String name, Op f) {
        try {
            String fields = f.run();
            System.out.println("{\"op\":" + q(name) + ",\"ok\":true" + (fields.isEmpty() ? "" : "," + fields) + "}");
        } catch (Exception e) {
            Throwable c = e instanceof ExecutionException && e.getCause() != null ? e.getCause() : e;
            System.out.println("{\"op\":" + q(name) + ",\"ok\":false,\"error\":" + q(c.getClass().getSimpleName() + ": " + c.getMessage()) + "}");
        }
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        bootstrap = args[0];
        String topic = args[1], group = args[2];
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
        try (Admin admin = Admin.create(p)) {
            op("describeCluster", () -> {
                DescribeClusterResult r = admin.describeCluster();
                return "\"cluster_id\":" + q(r.clusterId().get()) + ",\"nodes\":" + r.nodes().get().size()
                    + ",\"controller\":" + r.controller().get().id();
            });
            op("createTopics", () -> {
                admin.createTopics(List.of(new NewTopic(topic, 2, (short) -1))).all().get();
                return "";
            });
            op("describeTopics", () -> {
                TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
                return "\"partitions\":" + d.partitions().size() + ",\"topic_id\":" + q(d.topicId())
                    + ",\"leaders\":" + q(d.partitions().stream().map(x -> x.leader().id()).collect(Collectors.toList()));
            });
            op("createPartitions", () -> {
                admin.createPartitions(Map.of(topic, NewPartitions.increaseTo(3))).all().get();
                return "\"partitions\":" + admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic).partitions().size();
            });
            // Ten records on partition 0 with known timestamps.
            long base = System.currentTimeMillis() - 60_000;
            Properties pp = new Properties();
            pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            try (Producer<String, String> prod = new KafkaProducer<>(pp, new StringSerializer(), new StringSerializer())) {
                for (int i = 0; i < 10; i++) {
                    prod.send(new ProducerRecord<>(topic, 0, base + i * 1000L, "k" + i, "v" + i)).get();
                }
            }
            TopicPartition tp0 = new TopicPartition(topic, 0);
            op("listOffsets", () -> {
                long earliest = admin.listOffsets(Map.of(tp0, OffsetSpec.earliest())).all().get().get(tp0).offset();
                long latest = admin.listOffsets(Map.of(tp0, OffsetSpec.latest())).all().get().get(tp0).offset();
                long byTime = admin.listOffsets(Map.of(tp0, OffsetSpec.forTimestamp(base + 4500))).all().get().get(tp0).offset();
                ListOffsetsResult.ListOffsetsResultInfo max = admin.listOffsets(Map.of(tp0, OffsetSpec.maxTimestamp())).all().get().get(tp0);
                return "\"earliest\":" + earliest + ",\"latest\":" + latest + ",\"by_timestamp\":" + byTime
                    + ",\"max_timestamp_offset\":" + max.offset() + ",\"max_timestamp\":" + (max.timestamp() - base);
            });
            op("deleteRecords", () -> {
                long low = admin.deleteRecords(Map.of(tp0, RecordsToDelete.beforeOffset(3))).all().get() == null ? -1 : 0;
                long earliest = admin.listOffsets(Map.of(tp0, OffsetSpec.earliest())).all().get().get(tp0).offset();
                return "\"earliest\":" + earliest;
            });
            ConfigResource res = new ConfigResource(ConfigResource.Type.TOPIC, topic);
            op("alterConfigs", () -> {
                admin.incrementalAlterConfigs(Map.of(res, List.of(new AlterConfigOp(
                    new ConfigEntry("retention.ms", "3600000"), AlterConfigOp.OpType.SET)))).all().get();
                return "";
            });
            op("describeConfigs", () -> {
                Config c = admin.describeConfigs(List.of(res)).all().get().get(res);
                return "\"retention_ms\":" + q(c.get("retention.ms").value());
            });
            // A group with committed offsets, by a consumer that leaves.
            Properties cp = new Properties();
            cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            cp.put(ConsumerConfig.GROUP_ID_CONFIG, group);
            cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
            cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
            int consumed = 0;
            try (Consumer<String, String> c = new KafkaConsumer<>(cp, new StringDeserializer(), new StringDeserializer())) {
                c.subscribe(List.of(topic));
                long end = System.currentTimeMillis() + 30_000;
                while (consumed < 7 && System.currentTimeMillis() < end) {
                    consumed += c.poll(Duration.ofMillis(500)).count();
                }
                c.commitSync();
            }
            final int got = consumed;
            op("consume", () -> "\"records\":" + got);
            op("listGroups", () -> {
                boolean found = admin.listGroups().all().get().stream().anyMatch(g -> g.groupId().equals(group));
                return "\"found\":" + found;
            });
            op("describeConsumerGroups", () -> {
                ConsumerGroupDescription d = admin.describeConsumerGroups(List.of(group)).all().get().get(group);
                return "\"state\":" + q(d.groupState()) + ",\"coordinator\":" + d.coordinator().id();
            });
            op("listConsumerGroupOffsets", () -> {
                Map<TopicPartition, OffsetAndMetadata> o = admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
                return "\"p0\":" + (o.get(tp0) == null ? -1 : o.get(tp0).offset());
            });
            op("alterConsumerGroupOffsets", () -> {
                admin.alterConsumerGroupOffsets(group, Map.of(tp0, new OffsetAndMetadata(5))).all().get();
                return "\"p0\":" + admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get().get(tp0).offset();
            });
            // A transaction, committed, for the transaction listings.
            String txnId = group + "-tx";
            Properties tp = new Properties();
            tp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            tp.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txnId);
            try (Producer<String, String> prod = new KafkaProducer<>(tp, new StringSerializer(), new StringSerializer())) {
                prod.initTransactions();
                prod.beginTransaction();
                prod.send(new ProducerRecord<>(topic, 1, "tx", "committed")).get();
                prod.commitTransaction();
            }
            op("describeTransactions", () -> {
                TransactionDescription d = admin.describeTransactions(List.of(txnId)).all().get().get(txnId);
                return "\"state\":" + q(d.state()) + ",\"producer_id\":" + d.producerId();
            });
            op("describeProducers", () -> {
                DescribeProducersResult.PartitionProducerState s = admin.describeProducers(List.of(tp0)).all().get().get(tp0);
                return "\"producers\":" + s.activeProducers().size();
            });
            op("listTransactions", () -> {
                boolean found = admin.listTransactions().all().get().stream().anyMatch(t -> t.transactionalId().equals(txnId));
                return "\"found\":" + found;
            });
            op("deleteConsumerGroups", () -> {
                admin.deleteConsumerGroups(List.of(group)).all().get();
                return "";
            });
            op("deleteTopics", () -> {
                admin.deleteTopics(List.of(topic)).all().get();
                return "";
            });
        }
    }
}
